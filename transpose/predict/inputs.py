"""The inputs of top-down prediction: image files, their ids and their person boxes."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
PERSON_CATEGORY = 1
WHOLE_IMAGE_NOTE = (
    "no --boxes given: each image is taken as ONE person whose box is the whole image "
    "(for several people per image pass a COCO detections file with --boxes)"
)


class PredictInputError(ValueError):
    """A model, image or boxes input is missing or malformed; the message names it and says what to fix."""


@dataclass
class ImageInput:
    path: Path
    image_id: int
    boxes: np.ndarray | None = None  # [M, 4] x, y, w, h; None: the whole image
    box_scores: np.ndarray | None = None  # [M]


def list_images(path: str | Path) -> list[Path]:
    """The image file itself, or every .jpg/.jpeg/.png directly inside a directory, sorted by name."""
    path = Path(path)
    if not path.exists():
        raise PredictInputError(f"--images {path} does not exist: give an image file or a directory of images")
    if path.is_file():
        return [path]
    files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise PredictInputError(
            f"--images {path} holds no {'/'.join(IMAGE_SUFFIXES)} files: point it at a folder of images or one image"
        )
    return files


def annotation_ids(path: str | Path) -> dict[str, int]:
    """file name -> image id from a COCO annotation file's `images` list."""
    path = Path(path)
    data = _read_json(path, "--annotations")
    images = data.get("images") if isinstance(data, dict) else None
    if not isinstance(images, list) or not all(isinstance(i, dict) and "file_name" in i and "id" in i for i in images):
        raise PredictInputError(f"--annotations {path}: expected a COCO JSON object with images[{{id, file_name}}]")
    return {Path(i["file_name"]).name: int(i["id"]) for i in images}


def assign_image_ids(files: list[Path], by_name: dict[str, int] | None = None) -> list[int]:
    """Image id of each file: from `by_name` (annotations), else the COCO name's number (000000000785.jpg -> 785),
    else a fresh id above every other."""
    by_name = by_name or {}
    known = [by_name.get(f.name, int(f.stem) if f.stem.isdigit() else None) for f in files]
    fresh = iter(range(max((i for i in known if i is not None), default=0) + 1, 2**62))
    return [i if i is not None else next(fresh) for i in known]


def load_detections(path: str | Path, min_score: float = 0.0) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """Person boxes of a COCO detection results file: image id -> (boxes [M, 4], scores [M]).

    Keeps category 1 (a missing category_id counts as person) with score >= min_score and a positive size.
    """
    path = Path(path)
    data = _read_json(path, "--boxes")
    hint = 'expected a COCO detections list [{"image_id", "category_id", "bbox": [x, y, w, h], "score"}, ...]'
    if not isinstance(data, list):
        raise PredictInputError(f"--boxes {path}: top level is a {type(data).__name__}; {hint}")
    boxes: dict[int, list] = {}
    for index, det in enumerate(data):
        if not isinstance(det, dict) or not {"image_id", "bbox", "score"} <= det.keys():
            raise PredictInputError(f"--boxes {path}: entry #{index} lacks image_id/bbox/score; {hint}")
        bbox = det["bbox"]
        if not isinstance(bbox, list) or len(bbox) != 4 or not all(isinstance(v, (int, float)) for v in bbox):
            raise PredictInputError(f"--boxes {path}: entry #{index} has bbox {bbox!r}; {hint}")
        if det.get("category_id", PERSON_CATEGORY) != PERSON_CATEGORY or float(det["score"]) < min_score:
            continue
        if bbox[2] > 0 and bbox[3] > 0:
            boxes.setdefault(int(det["image_id"]), []).append([*map(float, bbox), float(det["score"])])
    return {k: (np.asarray(v)[:, :4], np.asarray(v)[:, 4]) for k, v in boxes.items()}


def _read_json(path: Path, option: str):
    if not path.is_file():
        raise PredictInputError(f"{option} {path} does not exist")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise PredictInputError(f"{option} {path} is not valid JSON ({err})") from err


def image_inputs(files: list[Path], ids: list[int], detections: dict | None) -> list[ImageInput]:
    """Pair each file with its id and boxes (no detections for an image: no people; None: the whole image)."""
    inputs = []
    for path, image_id in zip(files, ids):
        if detections is None:
            inputs.append(ImageInput(path, image_id))
        else:
            boxes, scores = detections.get(image_id, (np.zeros((0, 4)), np.zeros(0)))
            inputs.append(ImageInput(path, image_id, boxes, scores))
    return inputs
