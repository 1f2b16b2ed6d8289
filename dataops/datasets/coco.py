"""COCO-format person keypoints as PersonRecords: ground-truth boxes (cleaned as the reference does) or the
boxes of a person-detection results file.

Works for any COCO-format keypoint file (COCO, OCHuman, PoseTrack-style: RLE segmentation, no `area`,
boolean `iscrowd`, file names with folders, other keypoint counts): the keypoint set comes from the category.
A file that is not COCO keypoint JSON (not UTF-8 JSON, no images/annotations/categories lists, categories or
images without unique integer ids, duplicate annotation ids) raises a CocoFormatError naming it and the entry; an
annotation or a detection that cannot be used is skipped and counted by reason in the SkipReport (with the
first places), never silently dropped. Numbers must be numbers: a string, a bool, NaN or inf is malformed.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from dataops.datasets.records import PersonRecord, SkipReport
from transpose.evaluation import CocoFormatError
from transpose.evaluation.json_input import is_id, is_number, read_json, show
from transpose.geometry import box_to_center_scale, clean_box
from transpose.keypoints import KeypointSet, from_coco_category


def _load(path: Path, what: str):
    return read_json(path, f"a COCO {what}")


_PLAIN_NUMBERS = frozenset((int, float))
_FLOAT32_MAX = float(np.finfo(np.float32).max)


def numbers(value, count: int) -> np.ndarray | None:
    """`value` as `count` finite float32s, or None if it is anything else (strings, bools, NaN, too large)."""
    if not isinstance(value, list) or len(value) != count:
        return None
    try:
        if _PLAIN_NUMBERS.issuperset(map(type, value)):  # plain JSON numbers, checked at C speed
            array = np.array(value, dtype=np.float64)
        elif all(is_number(v) for v in value):  # subclasses of int and float too
            array = np.array([float(v) for v in value], dtype=np.float64)
        else:
            return None
    except OverflowError:  # an int too large for a float
        return None
    if not (np.abs(array) <= _FLOAT32_MAX).all():  # NaN, inf, or beyond float32
        return None
    return array.astype(np.float32)


def _valid_scale(scale: np.ndarray) -> bool:
    return bool(np.isfinite(scale).all() and (scale > 0).all())


def load_keypoint_file(ann_file: str | Path, sigmas=None) -> tuple[dict, KeypointSet]:
    """Parse and check the top level of a COCO keypoint file; returns (data, its keypoint set).

    The keypoint set is the file's first keypoint category (`from_coco_category`; `sigmas` for a set that is
    not COCO's and whose file gives none)."""
    ann_file = Path(ann_file)
    data = _load(ann_file, "keypoint annotation file")
    if not isinstance(data, dict) or not all(
        isinstance(data.get(k), list) for k in ("images", "annotations", "categories")
    ):
        raise CocoFormatError(f"{ann_file}: expected a JSON object with lists 'images', 'annotations', 'categories'")
    categories = [c for c in data["categories"] if isinstance(c, dict) and c.get("keypoints")]
    if not categories:
        raise CocoFormatError(f"{ann_file}: no category lists 'keypoints' names; is this a keypoint file?")
    return data, from_coco_category(categories[0], sigmas, where=f"{ann_file}: categories")


def _category_ids(data: dict, ann_file: Path) -> tuple[int, set[int]]:
    """(the keypoint category's id, every category's id); a category without a unique integer id is an error."""
    seen: dict[int, int] = {}
    for index, cat in enumerate(data["categories"]):
        value = cat.get("id") if isinstance(cat, dict) else None
        if not is_id(value):
            raise CocoFormatError(
                f"{ann_file}: categories[{index}] needs an integer 'id', got {show(cat if value is None else value)}"
            )
        if value in seen:
            raise CocoFormatError(f"{ann_file}: categories[{index}]: id {value} repeats categories[{seen[value]}]")
        seen[value] = index
    keypointed = next(c for c in data["categories"] if isinstance(c, dict) and c.get("keypoints"))
    return keypointed["id"], set(seen)


def _positive_size(value) -> int | None:
    """An image width or height: a positive integer below 2^31 (an integral float too), else None."""
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        value = int(value)
    return value if is_id(value) and 0 < value < 2**31 else None


def _image_table(data: dict, ann_file: Path, image_dir: Path, report: SkipReport) -> dict[int, dict]:
    """Images by id; an entry that cannot be used is counted, a repeated id is an error."""
    table: dict[int, dict] = {}
    first: dict[int, int] = {}
    for index, img in enumerate(data["images"]):
        where = f"{ann_file}: images[{index}]"
        image_id = img.get("id") if isinstance(img, dict) else None
        if is_id(image_id) and image_id in first:
            raise CocoFormatError(f"{where}: id {image_id} repeats images[{first[image_id]}]; image ids must be unique")
        if is_id(image_id):
            first[image_id] = index
        name = img.get("file_name") if isinstance(img, dict) else None
        width, height = (_positive_size(img.get(k)) if isinstance(img, dict) else None for k in ("width", "height"))
        if not is_id(image_id) or not isinstance(name, str) or not name or width is None or height is None:
            report.add(
                "malformed image entry",
                f"{where} needs an integer id, a file_name, and width and height as positive integers",
            )
            continue
        table[image_id] = {"path": image_dir / name, "width": width, "height": height}
    return table


def _keypoints(ann: dict, k: int) -> np.ndarray | None:
    """[k, 3] (x, y, v) with v in 0, 1, 2, or None."""
    kpts = numbers(ann.get("keypoints"), 3 * k)
    if kpts is None:
        return None
    kpts = kpts.reshape(k, 3)
    v = kpts[:, 2]
    return kpts if ((v == 0) | (v == 1) | (v == 2)).all() else None


AnnotationCheck = tuple[tuple[str, str] | None, np.ndarray | None, np.ndarray | None]


def _check_annotation(ann, k: int, category: int, categories: set[int], images: dict) -> AnnotationCheck:
    """(problem, keypoints [k, 3], bbox [4]) of a ground-truth annotation, each number parsed once: problem is
    (reason, detail) why it cannot be used, ('', '') for another category's annotation (not ours to count), or
    None, and then the keypoints and the box are given."""
    if not isinstance(ann, dict):
        return ("malformed annotation", f"is {show(ann)}, not an object"), None, None
    cat = ann.get("category_id", category)
    if not is_id(cat) or cat not in categories:
        detail = f"category_id {show(cat)} is not the id of an entry of 'categories'"
        return ("malformed annotation", detail), None, None
    if cat != category:
        return ("", ""), None, None
    crowd = ann.get("iscrowd", 0)
    if not (isinstance(crowd, bool) or (isinstance(crowd, int) and crowd in (0, 1))):
        detail = f'iscrowd {show(crowd)} is not 0/1 or false/true ("0" would read as a crowd)'
        return ("malformed annotation", detail), None, None
    if "id" in ann and not is_id(ann["id"]):
        return ("malformed annotation", f"id {show(ann['id'])} is not an integer"), None, None
    if crowd:
        return ("crowd annotation", ""), None, None
    if not is_id(ann.get("image_id")):
        return ("malformed annotation", f"image_id {show(ann.get('image_id'))} is not an integer"), None, None
    if ann["image_id"] not in images:
        return ("annotation of an unknown image", f"image_id {ann['image_id']}"), None, None
    kpts, box = _keypoints(ann, k), numbers(ann.get("bbox"), 4)
    if kpts is None or box is None:
        detail = f"needs 'bbox' [x,y,w,h] and {3 * k} 'keypoints' numbers (x, y, v in 0/1/2)"
        return ("malformed annotation", detail), None, None
    if "area" in ann and numbers([ann["area"]], 1) is None:
        return ("malformed annotation", f"area {show(ann['area'])} is not a number"), None, None
    return None, kpts, box


def read_coco_keypoints(
    ann_file: str | Path, image_dir: str | Path, aspect_ratio: float = 0.75, sigmas=None, key_prefix: str = "c"
) -> tuple[list[PersonRecord], SkipReport, KeypointSet]:
    """Ground-truth persons, cleaned as the reference does for training and GT-box validation.

    Kept: not crowd, the keypoint category (or no category_id), a box of positive width and height that survives
    cleaning (clipped to the image, area > 0, not shrunk to a point), at least one labelled keypoint. Visibility 2
    becomes 1. Box score 1. Annotations of the file's other categories are left out uncounted.
    """
    ann_file, image_dir = Path(ann_file), Path(image_dir)
    data, kset = load_keypoint_file(ann_file, sigmas)
    category, categories = _category_ids(data, ann_file)
    report = SkipReport()
    images = _image_table(data, ann_file, image_dir, report)
    k = kset.num_keypoints
    records = []
    kept: dict[int, int] = {}  # annotation id -> index
    for index, ann in enumerate(data["annotations"]):

        def where(index: int = index, ann=ann) -> str:  # the annotation, for a message (built only for one)
            return f"{ann_file}: annotations[{index}] (id {show(ann.get('id')) if isinstance(ann, dict) else '?'})"

        problem, kpts, box = _check_annotation(ann, k, category, categories, images)
        if problem == ("", ""):
            continue  # another category (e.g. not a person): not ours to count
        if problem is not None:
            report.add(problem[0], f"{where()}: {problem[1]}" if problem[1] else where())
            continue
        image = images[ann["image_id"]]
        cleaned = clean_box(box, image["width"], image["height"]) if box[2] > 0 and box[3] > 0 else None
        area = float(ann.get("area", box[2] * box[3]))
        if cleaned is None or cleaned[2] <= 0 or cleaned[3] <= 0 or area <= 0:
            report.add("degenerate box", f"{where()}: bbox {box.tolist()}, area {area}")
            continue
        if kpts[:, 2].max() <= 0:
            report.add("no labelled keypoints", where())
            continue
        center, scale = box_to_center_scale(cleaned, aspect_ratio)
        if not _valid_scale(scale):
            report.add("degenerate box", f"{where()}: bbox {box.tolist()} gives scale {scale.tolist()}")
            continue
        annotation_id = int(ann.get("id", index))
        if annotation_id in kept:
            raise CocoFormatError(
                f"{where()}: id {annotation_id} repeats annotations[{kept[annotation_id]}] (without an 'id', the index "
                "is the id); annotation ids must be unique (they make the sample keys): drop the duplicate or renumber"
            )
        kept[annotation_id] = index
        records.append(
            PersonRecord(
                key=f"{key_prefix}{ann['image_id']}a{annotation_id}",
                image_path=image["path"],
                image_id=int(ann["image_id"]),
                center=center,
                scale=scale,
                joints=kpts[:, :2].copy(),
                visible=np.minimum(kpts[:, 2], 1.0),
                annotation_id=annotation_id,
                extra={"bbox": cleaned.tolist(), "width": image["width"], "height": image["height"]},
            )
        )
    return records, report, kset


def _detection_problem(det, category: int, images: dict, score_threshold: float) -> tuple[str, str] | None:
    """(reason, detail) why a detection cannot be used, None if it can; ('', '') for another category's."""
    if not isinstance(det, dict):
        return "malformed detection", f"is {show(det)}, not an object"
    cat = det.get("category_id", category)
    if not is_id(cat):
        return "malformed detection", f"category_id {show(cat)} is not an integer"
    if cat != category:
        return "", ""
    if not is_id(det.get("image_id")):
        return "malformed detection", f"image_id {show(det.get('image_id'))} is not an integer"
    box = numbers(det.get("bbox"), 4)
    if box is None:
        return "malformed detection", f"bbox {show(det.get('bbox'))} is not [x, y, w, h] numbers"
    score = det.get("score")
    if not is_number(score) or not 0.0 <= score <= 1.0:  # NaN fails both comparisons
        return "detection score not in [0, 1]", f"score {show(score)}"
    image = images.get(det["image_id"])
    if image is None:
        return "detection of an unknown image", f"image_id {det['image_id']}"
    if score < score_threshold:
        return "detection below the score threshold", ""
    if box[2] <= 0 or box[3] <= 0:
        return "degenerate box", f"bbox {box.tolist()}"
    x, y, w, h = (float(v) for v in box)
    if x >= image["width"] or y >= image["height"] or x + w <= 0 or y + h <= 0:
        return "box outside the image", f"bbox {box.tolist()} on a {image['width']}x{image['height']} image"
    return None


def read_coco_detections(
    ann_file: str | Path,
    det_file: str | Path,
    image_dir: str | Path,
    aspect_ratio: float = 0.75,
    score_threshold: float = 0.0,
    sigmas=None,
    key_prefix: str = "d",
) -> tuple[list[PersonRecord], SkipReport, KeypointSet]:
    """Persons from a detection results file ([{image_id, category_id, bbox, score}]) over the images of
    `ann_file`, for detected-box validation. Boxes are used as given (no cleaning), as the reference does; a box
    of zero size, wholly outside its image or with a score outside [0, 1] is skipped and counted. Detections of
    another category are left out uncounted."""
    ann_file, det_file, image_dir = Path(ann_file), Path(det_file), Path(image_dir)
    data, kset = load_keypoint_file(ann_file, sigmas)
    category, _ = _category_ids(data, ann_file)
    report = SkipReport()
    images = _image_table(data, ann_file, image_dir, report)
    detections = _load(det_file, "detection results file")
    if not isinstance(detections, list):
        raise CocoFormatError(f"{det_file}: expected a JSON list of {{image_id, category_id, bbox, score}}")
    k = kset.num_keypoints
    records = []
    for index, det in enumerate(detections):
        where = f"{det_file}: [{index}]"
        problem = _detection_problem(det, category, images, score_threshold)
        if problem == ("", ""):
            continue
        if problem is not None:
            report.add(problem[0], f"{where}: {problem[1]}" if problem[1] else where)
            continue
        box, image = numbers(det["bbox"], 4), images[det["image_id"]]
        center, scale = box_to_center_scale(box, aspect_ratio)
        if not _valid_scale(scale) or not np.isfinite(center).all():
            report.add("degenerate box", f"{where}: bbox {box.tolist()} gives scale {scale.tolist()}")
            continue
        records.append(
            PersonRecord(
                key=f"{key_prefix}{det['image_id']}n{index}",
                image_path=image["path"],
                image_id=int(det["image_id"]),
                center=center,
                scale=scale,
                joints=np.zeros((k, 2), np.float32),
                visible=np.zeros(k, np.float32),
                score=float(det["score"]),
                extra={"bbox": box.tolist(), "width": image["width"], "height": image["height"]},
            )
        )
    return records, report, kset
