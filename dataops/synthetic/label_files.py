"""COCO-format annotation and detection files of a real dataset's size from label-only scenes: no pixels.

    from dataops.synthetic.label_files import COCO_TRAIN2017, COCO_VAL2017, write_label_split
    write_label_split(SyntheticConfig(), COCO_TRAIN2017, "train.json")                     # 118,287 images
    write_label_split(SyntheticConfig(), COCO_VAL2017, "val.json", detections="det.json")  # 5000, 104k boxes

The scenes are `scene.sample_labels`'s (people posed, placed, occluded and cut by the frame, painted into the
owner/part map only and labelled by the generator's COCO rules) and each image's entry, annotations and fake
detector boxes are written by the generator's own record code (`writer`), so the files have the keys, boxes,
segment areas, RLE masks and ids of the embedded dataset. As in COCO not every image shows someone: images
0, 1, ... are scenes until the persons wanted are annotated, the rest are image entries without people (in
train2017, 64,115 of 118,287 images have a person). The detection file holds boxes for every image (on an
image without people, false positives only), with the detector's false-positive rate raised so that the file
has about the number of boxes asked for (COCO's val2017 person detections: 104,125 boxes, about 21 an image,
most of them low-scored). Deterministic by (seed, split, index), whatever the worker count.
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import cv2
import numpy as np

from dataops.synthetic.config import SyntheticConfig
from dataops.synthetic.detections import fake_detections
from dataops.synthetic.scene import SPLITS, sample_labels
from dataops.synthetic.writer import _coco_category, _coco_record, image_id

TRUE_BOXES_PER_PERSON = 1.0  # about what the fake detector gives a person: found ~0.9, a duplicate ~0.1


@dataclass(frozen=True)
class LabelSplit:
    """The size of a label-only COCO split."""

    split: str  # "coco_train" or "coco_val" (sets image ids and the random streams)
    images: int  # image entries in the file
    persons: int  # annotated persons wanted (every one has labelled keypoints)
    detections: int = 0  # boxes wanted in the detection file (0: the detector's own rate)

    def __post_init__(self) -> None:
        if self.split not in ("coco_train", "coco_val"):
            raise ValueError(f"split must be coco_train or coco_val, got {self.split!r}")
        if not 0 < self.images < 1_000_000 or self.persons < 0 or self.detections < 0:
            raise ValueError(f"images must be in [1, 999999] and persons, detections >= 0, got {self}")

    def scaled(self, fraction: float) -> LabelSplit:
        """The same split at `fraction` of its size (at least one image)."""
        return replace(
            self,
            images=max(1, round(self.images * fraction)),
            persons=round(self.persons * fraction),
            detections=round(self.detections * fraction),
        )


COCO_TRAIN2017 = LabelSplit("coco_train", images=118_287, persons=149_813)  # persons with keypoints
COCO_VAL2017 = LabelSplit("coco_val", images=5_000, persons=6_352, detections=104_125)


@dataclass(frozen=True)
class LabelSplitSummary:
    """What a label-only split's files hold."""

    split: str
    images: int
    images_with_people: int
    persons: int  # annotations, each with labelled keypoints
    keypoints_labelled: int  # v > 0 over all annotations
    detections: int  # boxes in the detection file (0 without one)
    annotation_bytes: int
    detection_bytes: int

    def to_dict(self) -> dict:
        return asdict(self)


_WORKER: dict = {}


def _init_worker(config: SyntheticConfig, split: str) -> None:
    cv2.setNumThreads(1)
    _WORKER["config"], _WORKER["split"] = config, split


def _scene_record(index: int) -> dict:
    """Worker: the COCO record (image entry, annotations, detections for val) of label-only scene `index`."""
    config, split = _WORKER["config"], _WORKER["split"]
    record = _coco_record(config, split, index, sample_labels(config, split, index))
    del record["people"]
    return record


def _empty_record(config: SyntheticConfig, split: str, index: int) -> dict:
    """An image entry without people; on val, the detector's false positives there (random boxes)."""
    width, height = config.image_size
    img_id = image_id(split, index)
    record = {
        "image": {"id": img_id, "file_name": f"{img_id:012d}.jpg", "width": width, "height": height},
        "annotations": [],
    }
    if split == "coco_val":
        rng = np.random.default_rng(np.random.SeedSequence([config.seed, SPLITS[split], index, 1]))
        record["detections"] = [
            {"image_id": img_id, "category_id": 1, "bbox": box, "score": round(score, 4)}
            for box, score in fake_detections([], [], config, rng)
        ]
    return record


def detector_config(config: SyntheticConfig, spec: LabelSplit) -> SyntheticConfig:
    """`config` with the fake detector's false-positive rate set so that the split gets about `spec.detections`
    boxes (unchanged when it asks for none)."""
    if not spec.detections:
        return config
    rate = max(0.0, spec.detections - TRUE_BOXES_PER_PERSON * spec.persons) / spec.images
    return replace(config, det_false_positives=rate)


@contextlib.contextmanager
def _scenes(config: SyntheticConfig, spec: LabelSplit, workers: int) -> Iterator[Iterator[dict]]:
    """The records of scenes 0, 1, ... in order: sampled here (one worker) or in a pool of spawned processes."""
    indices = range(spec.images if spec.persons else 0)
    if workers == 1 or not spec.persons:
        threads = cv2.getNumThreads()
        _init_worker(config, spec.split)
        try:
            yield map(_scene_record, indices)
        finally:
            cv2.setNumThreads(threads)
        return
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(workers, initializer=_init_worker, initargs=(config, spec.split)) as pool:
        yield pool.imap(_scene_record, indices, chunksize=16)


def label_records(
    config: SyntheticConfig, spec: LabelSplit, workers: int | None = None, progress: bool = True
) -> list[dict]:
    """The split's records in image order: scenes until `spec.persons` persons are annotated (or every image is
    one), then images without people up to `spec.images`. Scenes are sampled in `workers` processes."""
    records: list[dict] = []
    persons = 0
    workers = max(1, workers or multiprocessing.cpu_count())
    bar = _progress_bar(spec.persons, f"{spec.split} persons (label-only)", progress)
    with _scenes(config, spec, workers) as scenes:
        for record in scenes:
            records.append(record)
            found = sum(1 for a in record["annotations"] if a["num_keypoints"] > 0)
            persons += found
            if bar is not None:
                bar.update(found)
            if persons >= spec.persons:
                break  # leaving the pool terminates the workers' remaining scenes
    if bar is not None:
        bar.close()
    records += [_empty_record(config, spec.split, i) for i in range(len(records), spec.images)]
    return records


def _progress_bar(total: int, desc: str, enabled: bool):
    try:
        from tqdm import tqdm
    except ImportError:  # no bar without tqdm
        return None
    return tqdm(total=total, desc=desc, unit="person", disable=not enabled)


def _dump(path: Path, data) -> int:
    """Write compact JSON (streamed, not built as one string); returns the file's size."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        json.dump(data, f, separators=(",", ":"))
    return path.stat().st_size


def write_label_split(
    config: SyntheticConfig,
    spec: LabelSplit,
    annotations: str | Path,
    detections: str | Path | None = None,
    workers: int | None = None,
    progress: bool = True,
) -> LabelSplitSummary:
    """Write the split's COCO keypoint file at `annotations` and, for a val split, its detection results file at
    `detections` ([{image_id, category_id, bbox, score}], best first per image); returns what they hold."""
    config = detector_config(config, spec)
    records = label_records(config, spec, workers, progress)
    anns = [a for r in records for a in r["annotations"]]
    coco = {
        "info": {"description": f"dataops.synthetic label-only people, seed {config.seed}", "version": "1.0"},
        "licenses": [],
        "images": [r["image"] for r in records],
        "annotations": anns,
        "categories": [_coco_category()],
    }
    annotation_bytes = _dump(Path(annotations), coco)
    boxes: list[dict] = []
    detection_bytes = 0
    if detections is not None:
        if spec.split != "coco_val":
            raise ValueError("detections: the fake detector runs on val splits only")
        boxes = [d for r in records for d in sorted(r["detections"], key=lambda d: -d["score"])]
        detection_bytes = _dump(Path(detections), boxes)
    return LabelSplitSummary(
        split=spec.split,
        images=len(records),
        images_with_people=sum(1 for r in records if r["annotations"]),
        persons=sum(1 for a in anns if a["num_keypoints"] > 0),
        keypoints_labelled=sum(a["num_keypoints"] for a in anns),
        detections=len(boxes),
        annotation_bytes=annotation_bytes,
        detection_bytes=detection_bytes,
    )
