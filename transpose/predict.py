"""`transpose predict`: top-down pose estimation on image files, as the reference evaluates.

One job: iterate the inputs (one image or every .jpg/.jpeg/.png of a directory), crop every person box (from a
COCO detections file, or the whole image), run the model on batches that span images (flip test, DARK
decoding), rescore and OKS-NMS as the reference, and write in the output directory:

    results.json                    COCO keypoint results [{image_id, category_id: 1, keypoints: [x, y, s]*K, score}]
    images.json                     the images read: [{id, file_name, width, height, people}]
    <stem>_pose.jpg                 each image with the kept people's skeletons
    <stem>_person<i>_explain.png    with explain: person i's dependency areas per encoder layer
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch

from transpose.codec import HeatmapCodec
from transpose.evaluation.coco import coco_result, nms_per_image, rescore
from transpose.inference import crop_heatmaps, keypoint_set_for, normalize, person_crops, read_image_rgb
from transpose.keypoints import KeypointSet

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
PERSON_CATEGORY = 1
REGISTRY_PREFIX = "models:/"
WHOLE_IMAGE_NOTE = (
    "no --boxes given: each image is taken as ONE person whose box is the whole image "
    "(for several people per image pass a COCO detections file with --boxes)"
)


class PredictInputError(ValueError):
    """A model, image or boxes input is missing or malformed; the message names it and says what to fix."""


@dataclass(frozen=True)
class PredictOptions:
    batch_size: int = 32  # person crops per forward pass, across images
    flip: bool = True  # flip test
    min_box_score: float = 0.0  # detector boxes below this are dropped
    draw_threshold: float = 0.2  # keypoints with a lower heatmap maximum are not drawn
    explain: bool = False  # attention dependency-area figure per person

    def __post_init__(self):
        if self.batch_size < 1:
            raise PredictInputError(f"--batch-size must be at least 1, got {self.batch_size}")


@dataclass
class ImageInput:
    path: Path
    image_id: int
    boxes: np.ndarray | None = None  # [M, 4] x, y, w, h; None: the whole image
    box_scores: np.ndarray | None = None  # [M]


@dataclass
class Person:
    """One kept person: its box, crop geometry, keypoints in image coordinates and the rescored score."""

    image_id: int
    file: str
    index: int  # 1-based within its image, best first
    box: np.ndarray
    box_score: float
    center: np.ndarray
    scale: np.ndarray
    keypoints: np.ndarray  # [K, 2]
    maxvals: np.ndarray  # [K]
    score: float


@dataclass
class PredictReport:
    results: list[dict] = field(default_factory=list)  # COCO keypoint results
    people: list[Person] = field(default_factory=list)
    images: list[dict] = field(default_factory=list)  # {id, file_name, width, height, people}
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (file name, reason)
    written: list[Path] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------- inputs


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


# ---------------------------------------------------------------------------------------------- model


def load_predict_model(spec: str, arch: str | None = None, image_size: tuple[int, int] | None = None):
    """A model in eval mode from a checkpoint file, a run directory holding best.pth, or `models:/...`."""
    if image_size is not None and arch is None:
        raise PredictInputError("--image-size goes with --arch (a model.json or registered model sets its own)")
    if spec.startswith(REGISTRY_PREFIX):
        if arch:
            raise PredictInputError(f"--arch is for checkpoint files; {spec} knows its architecture")
        return _load_registered(spec)
    path = Path(spec)
    if not path.exists():
        raise PredictInputError(
            f"--model {path} does not exist: give a best.pth checkpoint, a run directory holding best.pth, "
            "or a registry URI models:/NAME@ALIAS"
        )
    weights = path / "best.pth" if path.is_dir() else path
    if not weights.is_file():
        raise PredictInputError(f"--model {path} is a directory without best.pth: point at the checkpoint file")
    from transpose.models import load_model

    card = card_for_checkpoint(weights, arch, image_size) if arch else None
    try:
        return load_model(weights, card)
    except FileNotFoundError as err:
        raise PredictInputError(str(err)) from err


def _load_registered(uri: str):
    try:
        from pipelines.registry import load_registered_model
    except ImportError as err:
        raise PredictInputError(
            f"--model {uri}: registry URIs need the pipeline extras (mlflow): pip install -e '.[pipeline]', "
            f"or pass a best.pth checkpoint instead ({err})"
        ) from err
    return load_registered_model(uri).eval()


def card_for_checkpoint(weights: Path, arch: str, image_size: tuple[int, int] | None):
    """A ModelCard for a checkpoint without model.json; keypoints counted from its final_layer.weight."""
    from transpose.models import MODELS, ModelCard, read_state_dict

    if arch not in MODELS:
        raise PredictInputError(f"--arch {arch!r} is not a registered model; see `transpose models`")
    final = read_state_dict(weights).get("final_layer.weight")
    if final is None:
        raise PredictInputError(f"{weights} has no final_layer.weight: is it a TransPose checkpoint?")
    num_keypoints = int(final.shape[0])
    if image_size is None:
        image_size = MODELS[arch](num_keypoints=num_keypoints).image_size
    return ModelCard(model=arch, num_keypoints=num_keypoints, image_size=tuple(image_size))


def pick_device(name: str | None) -> torch.device:
    """cuda when available unless told otherwise; a clear error for cuda without a GPU."""
    if name == "cuda" and not torch.cuda.is_available():
        raise PredictInputError("--device cuda: no CUDA GPU is visible here; use --device cpu")
    return torch.device(name or ("cuda" if torch.cuda.is_available() else "cpu"))


# ---------------------------------------------------------------------------------------------- batching


@dataclass
class _Job:
    """One decoded image waiting for the heatmaps of its person crops."""

    source: ImageInput
    image: np.ndarray
    boxes: np.ndarray
    box_scores: np.ndarray
    centers: np.ndarray
    scales: np.ndarray
    crops: np.ndarray
    sent: int = 0  # crops handed to a batch so far
    heatmaps: list[np.ndarray] = field(default_factory=list)

    @property
    def waiting(self) -> int:
        return len(self.crops) - self.sent

    @property
    def done(self) -> bool:
        return sum(len(h) for h in self.heatmaps) == len(self.crops)


def _make_job(source: ImageInput, image: np.ndarray, image_size: tuple[int, int]) -> _Job:
    if source.boxes is None:
        boxes, scores = np.array([[0.0, 0.0, image.shape[1], image.shape[0]]]), np.ones(1)
    else:
        boxes, scores = source.boxes, source.box_scores
    centers, scales, crops = person_crops(image, boxes, image_size)
    return _Job(source, image, np.asarray(boxes, np.float64), np.asarray(scores, np.float64), centers, scales, crops)


def _run_batch(model, pending: Iterable[_Job], batch_size: int, keypoint_set: KeypointSet, flip: bool) -> None:
    """Send the next `batch_size` waiting crops (spanning images, in order) through the model."""
    parts: list[tuple[_Job, int]] = []
    room = batch_size
    for job in pending:
        take = min(room, job.waiting)
        if take:
            parts.append((job, take))
            room -= take
        if not room:
            break
    crops = np.concatenate([job.crops[job.sent : job.sent + n] for job, n in parts])
    heatmaps = crop_heatmaps(model, crops, keypoint_set, flip)
    start = 0
    for job, n in parts:
        job.heatmaps.append(heatmaps[start : start + n])
        job.sent += n
        start += n


def iter_predictions(
    model, sources: list[ImageInput], options: PredictOptions, report: PredictReport
) -> Iterator[tuple[_Job, np.ndarray, np.ndarray]]:
    """(job, keypoints [M, K, 2], maxvals [M, K]) per readable image, in input order; crops batched across images.

    Unreadable images go to report.skipped.
    """
    cfg = model.data_config
    keypoint_set = keypoint_set_for(cfg.num_keypoints)
    codec = HeatmapCodec.for_model(cfg.image_size)
    pending: deque[_Job] = deque()
    for i, source in enumerate(_progress(sources, "predict")):
        try:
            pending.append(_make_job(source, read_image_rgb(source.path), cfg.image_size))
        except ValueError as err:
            report.skipped.append((source.path.name, str(err)))
        last = i == len(sources) - 1
        while sum(j.waiting for j in pending) >= (1 if last else options.batch_size):
            _run_batch(model, pending, options.batch_size, keypoint_set, options.flip)
        while pending and pending[0].done:
            job = pending.popleft()
            yield job, *_decode(job, codec, cfg.num_keypoints)


def _decode(job: _Job, codec: HeatmapCodec, num_keypoints: int) -> tuple[np.ndarray, np.ndarray]:
    """DARK-decoded keypoints [M, K, 2] in image coordinates and maxvals [M, K] of a finished job."""
    if not len(job.crops):
        return np.zeros((0, num_keypoints, 2), np.float32), np.zeros((0, num_keypoints), np.float32)
    return codec.decode(np.concatenate(job.heatmaps), job.centers, job.scales, dark=True)


def _progress(items: list, desc: str):
    """A tqdm bar over `items` when tqdm is installed, else the items themselves."""
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return items
    return tqdm(items, desc=desc, unit="img", dynamic_ncols=True)


def keep_people(job: _Job, keypoints: np.ndarray, maxvals: np.ndarray, keypoint_set: KeypointSet) -> list[Person]:
    """The reference's rescoring (box score x mean maxval above 0.2) and OKS-NMS (0.9) within one image."""
    if not len(keypoints):
        return []
    scores = rescore(maxvals, job.box_scores)
    poses = np.concatenate([keypoints, maxvals[..., None]], axis=2).astype(np.float64)
    areas = job.scales[:, 0] * job.scales[:, 1] * 200.0**2
    kept = nms_per_image(poses, scores, areas, [job.source.image_id] * len(poses), keypoint_set.sigmas)
    return [
        Person(
            image_id=job.source.image_id,
            file=job.source.path.name,
            index=rank + 1,
            box=job.boxes[j],
            box_score=float(job.box_scores[j]),
            center=job.centers[j],
            scale=job.scales[j],
            keypoints=keypoints[j],
            maxvals=maxvals[j],
            score=float(scores[j]),
        )
        for rank, j in enumerate(kept)
    ]


# ---------------------------------------------------------------------------------------------- outputs

_LEFT, _RIGHT, _MIDDLE = (0, 140, 255), (255, 140, 0), (0, 200, 0)  # RGB


def draw_people(image_rgb: np.ndarray, people: list[Person], keypoint_set: KeypointSet, threshold: float) -> np.ndarray:
    """A copy of the image with each person's skeleton; keypoints scoring below `threshold` are hidden."""
    canvas = image_rgb.copy()
    thickness = max(1, round(min(canvas.shape[:2]) / 250))
    for person in people:
        shown = person.maxvals >= threshold
        if not shown.any():
            continue
        points = [tuple(p) for p in np.rint(person.keypoints).astype(int).tolist()]
        x, y, w, h = np.rint(person.box).astype(int).tolist()
        cv2.rectangle(canvas, (x, y), (x + w, y + h), (200, 200, 200), 1)
        for color, width in (((0, 0, 0), 3), ((255, 255, 255), 1)):  # white on a dark outline
            cv2.putText(canvas, f"#{person.index}", (x + 3, y + 15), cv2.FONT_HERSHEY_SIMPLEX, 0.5, color, width)
        for a, b in keypoint_set.skeleton:
            if shown[a] and shown[b]:
                cv2.line(canvas, points[a], points[b], _limb_color(keypoint_set, a, b), thickness + 1, cv2.LINE_AA)
        for k in np.flatnonzero(shown):
            cv2.circle(canvas, points[k], thickness + 2, (255, 0, 0), -1, cv2.LINE_AA)
    return canvas


def _limb_color(keypoint_set: KeypointSet, a: int, b: int) -> tuple[int, int, int]:
    side = keypoint_set.names[a] + keypoint_set.names[b]
    return _LEFT if "left" in side else _RIGHT if "right" in side else _MIDDLE


def write_image(path: Path, image_rgb: np.ndarray) -> Path:
    if not cv2.imwrite(str(path), cv2.cvtColor(image_rgb, cv2.COLOR_RGB2BGR)):
        raise OSError(f"could not write {path}")
    return path


def explain_person(model, image_rgb: np.ndarray, person: Person, keypoint_set: KeypointSet, out_path: Path) -> Path:
    """The paper's Fig. 6-style dependency areas of one person, on its model-input crop."""
    from transpose.explain import explain_crop, plot_attention_areas
    from transpose.inference import crop

    cfg = model.data_config
    (h, w), (hm_h, hm_w) = cfg.image_size, cfg.heatmap_size
    crop_rgb = crop(image_rgb, person.center, person.scale, cfg.image_size)
    device = next(model.parameters()).device
    areas, coords_hm, scores = explain_crop(model, normalize(crop_rgb[None], cfg.mean, cfg.std)[0].to(device))
    ratio = (w - 1) / (hm_w - 1)  # heatmap -> crop, about the centres (unbiased convention)
    coords_crop = (np.asarray(coords_hm) - [(hm_w - 1) / 2, (hm_h - 1) / 2]) * ratio + [(w - 1) / 2, (h - 1) / 2]
    title = f"{person.file} person #{person.index}: dependency areas per layer, delta={areas.threshold:g}"
    return plot_attention_areas(crop_rgb, coords_crop, areas, keypoint_set, out_path, scores=scores, title=title)


def predict_images(model, sources: list[ImageInput], out_dir: str | Path, options: PredictOptions) -> PredictReport:
    """Predict every image, writing <stem>_pose.jpg (and explain figures) as images finish; returns the report.

    results.json is written by `write_results` once all images are done.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    keypoint_set = keypoint_set_for(model.data_config.num_keypoints)
    report = PredictReport()
    for job, keypoints, maxvals in iter_predictions(model, sources, options, report):
        people = keep_people(job, keypoints, maxvals, keypoint_set)
        stem = job.source.path.stem
        canvas = draw_people(job.image, people, keypoint_set, options.draw_threshold)
        report.written.append(write_image(out_dir / f"{stem}_pose.jpg", canvas))
        if options.explain:
            for person in people:
                path = out_dir / f"{stem}_person{person.index}_explain.png"
                report.written.append(explain_person(model, job.image, person, keypoint_set, path))
        report.people += people
        report.results += [
            coco_result(p.image_id, np.column_stack([p.keypoints, p.maxvals]), p.score, PERSON_CATEGORY) for p in people
        ]
        height, width = job.image.shape[:2]
        report.images.append(
            {"id": job.source.image_id, "file_name": job.source.path.name, "width": width, "height": height,
             "people": len(people)}
        )  # fmt: skip
    return report


def write_results(report: PredictReport, out_dir: str | Path) -> Path:
    """results.json (COCO keypoint results) and images.json (file -> image id) in out_dir."""
    out_dir = Path(out_dir)
    (out_dir / "images.json").write_text(json.dumps(report.images, indent=1) + "\n")
    path = out_dir / "results.json"
    path.write_text(json.dumps(report.results) + "\n")
    return path


# ---------------------------------------------------------------------------------------------- command


def run(args) -> int:
    """`transpose predict` with parsed arguments (see `transpose predict --help`)."""
    options = PredictOptions(
        batch_size=args.batch_size,
        flip=not args.no_flip,
        min_box_score=args.min_box_score,
        draw_threshold=args.draw_threshold,
        explain=args.explain,
    )
    files = list_images(args.images)
    ids = assign_image_ids(files, annotation_ids(args.annotations) if args.annotations else None)
    detections = load_detections(args.boxes, args.min_box_score) if args.boxes else None
    if detections is not None and not set(ids) & set(detections):
        raise PredictInputError(
            f"--boxes {args.boxes}: none of its image ids match the {len(files)} image(s) in {args.images}; "
            "ids come from COCO file names (000000000785.jpg -> 785) or from --annotations images[].file_name"
        )
    if detections is None:
        print(WHOLE_IMAGE_NOTE)
    device = pick_device(args.device)
    image_size = tuple(args.image_size) if args.image_size else None
    model = load_predict_model(args.model, args.arch, image_size).to(device).eval()
    cfg = model.data_config
    if cfg.num_keypoints != 17:
        print(f"note: a {cfg.num_keypoints}-keypoint model: results.json keeps the COCO layout (category_id 1)")
    sources = image_inputs(files, ids, detections)
    with torch.inference_mode():
        report = predict_images(model, sources, args.out, options)
    print(summary(report, write_results(report, args.out), detections is not None))
    return 0


def summary(report: PredictReport, results_path: Path, detector_boxes: bool) -> str:
    """What was read, predicted, written and skipped (with the reason of each skipped image)."""
    lines = [f"{len(report.images)} image(s), {len(report.people)} person(s) -> {results_path}"]
    lines.append(f"pose drawings: {results_path.parent}/<name>_pose.jpg")
    empty = [i["file_name"] for i in report.images if not i["people"]]
    if empty and detector_boxes:
        lines.append(f"{len(empty)} image(s) had no person box in --boxes: {', '.join(empty[:10])}")
    if report.skipped:
        lines.append(f"skipped {len(report.skipped)} unreadable image(s):")
        lines += [f"  {name}: {reason}" for name, reason in report.skipped]
    return "\n".join(lines)
