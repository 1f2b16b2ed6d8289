"""COCO-format person keypoints as PersonRecords: ground-truth boxes (cleaned as the reference does) or the
boxes of a person-detection results file.

Works for any COCO-format keypoint file (COCO, OCHuman, PoseTrack-style: RLE segmentation, no `area`,
boolean `iscrowd`, file names with folders, other keypoint counts): the keypoint set comes from the category.
A file that is not COCO keypoint JSON raises an error naming it; an annotation that cannot be used is skipped
and counted by reason in the SkipReport, never silently dropped.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from dataops.datasets.records import PersonRecord, SkipReport
from transpose.evaluation import CocoFormatError
from transpose.geometry import box_to_center_scale, clean_box
from transpose.keypoints import KeypointSet, from_coco_category


def _load(path: Path, what: str):
    if not path.is_file():
        raise FileNotFoundError(f"{what} {path} does not exist")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise CocoFormatError(f"{path} is not valid JSON ({err}); expected a COCO {what}") from err


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


def _image_table(data: dict, ann_file: Path, image_dir: Path, report: SkipReport) -> dict[int, dict]:
    table = {}
    for index, img in enumerate(data["images"]):
        try:
            table[img["id"]] = {
                "path": image_dir / img["file_name"],
                "width": int(img["width"]),
                "height": int(img["height"]),
            }
        except (KeyError, TypeError, ValueError):
            report.add("malformed image entry", f"{ann_file}: images[{index}] needs id, file_name, width, height")
    return table


def read_coco_keypoints(
    ann_file: str | Path, image_dir: str | Path, aspect_ratio: float = 0.75, sigmas=None, key_prefix: str = "c"
) -> tuple[list[PersonRecord], SkipReport, KeypointSet]:
    """Ground-truth persons, cleaned as the reference does for training and GT-box validation.

    Kept: not crowd, category with keypoints, a box that survives cleaning (clipped to the image, area > 0),
    at least one labelled keypoint. Visibility 2 becomes 1. Box score 1.
    """
    ann_file, image_dir = Path(ann_file), Path(image_dir)
    data, kset = load_keypoint_file(ann_file, sigmas)
    report = SkipReport()
    images = _image_table(data, ann_file, image_dir, report)
    category_ids = {c["id"] for c in data["categories"] if c.get("keypoints")}
    k = kset.num_keypoints
    records = []
    for index, ann in enumerate(data["annotations"]):
        where = f"{ann_file}: annotations[{index}] (id {ann.get('id') if isinstance(ann, dict) else '?'})"
        if not isinstance(ann, dict) or ann.get("category_id") not in category_ids:
            if isinstance(ann, dict) and "category_id" in ann:
                continue  # another category (e.g. not a person): not ours to count
            report.add("malformed annotation", f"{where}: no category_id")
            continue
        if ann.get("iscrowd"):
            report.add("crowd annotation", where)
            continue
        image = images.get(ann.get("image_id"))
        if image is None:
            report.add("annotation of an unknown image", f"{where}: image_id {ann.get('image_id')}")
            continue
        try:
            kpts = np.asarray(ann["keypoints"], dtype=np.float32).reshape(k, 3)
            box = np.asarray(ann["bbox"], dtype=np.float32).reshape(4)
        except (KeyError, TypeError, ValueError):
            report.add("malformed annotation", f"{where}: needs 'bbox' [x,y,w,h] and {3 * k} 'keypoints' numbers")
            continue
        if not np.isfinite(kpts).all() or not np.isfinite(box).all():
            report.add("malformed annotation", f"{where}: non-finite numbers")
            continue
        cleaned = clean_box(box, image["width"], image["height"])
        area = float(ann.get("area", box[2] * box[3]))
        if cleaned is None or area <= 0:
            report.add("degenerate box", f"{where}: bbox {box.tolist()}")
            continue
        if kpts[:, 2].max() <= 0:
            report.add("no labelled keypoints", where)
            continue
        center, scale = box_to_center_scale(cleaned, aspect_ratio)
        records.append(
            PersonRecord(
                key=f"{key_prefix}{int(ann['image_id'])}a{int(ann.get('id', index))}",
                image_path=image["path"],
                image_id=int(ann["image_id"]),
                center=center,
                scale=scale,
                joints=kpts[:, :2].copy(),
                visible=np.minimum(kpts[:, 2], 1.0),
                annotation_id=int(ann.get("id", index)),
                extra={"bbox": cleaned.tolist(), "width": image["width"], "height": image["height"]},
            )
        )
    return records, report, kset


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
    `ann_file`, for detected-box validation. Boxes are used as given (no cleaning), as the reference does."""
    ann_file, det_file, image_dir = Path(ann_file), Path(det_file), Path(image_dir)
    data, kset = load_keypoint_file(ann_file, sigmas)
    report = SkipReport()
    images = _image_table(data, ann_file, image_dir, report)
    person_ids = {c["id"] for c in data["categories"] if c.get("keypoints")}
    detections = _load(det_file, "detection results file")
    if not isinstance(detections, list):
        raise CocoFormatError(f"{det_file}: expected a JSON list of {{image_id, category_id, bbox, score}}")
    k = kset.num_keypoints
    records = []
    for index, det in enumerate(detections):
        where = f"{det_file}: [{index}]"
        try:
            box = np.asarray(det["bbox"], dtype=np.float32).reshape(4)
            score = float(det["score"])
            image = images.get(det["image_id"])
        except (KeyError, TypeError, ValueError):
            report.add("malformed detection", f"{where}: needs image_id, bbox [x,y,w,h], score")
            continue
        if det.get("category_id", next(iter(person_ids))) not in person_ids:
            continue
        if image is None:
            report.add("detection of an unknown image", f"{where}: image_id {det['image_id']}")
            continue
        if score < score_threshold:
            report.add("detection below the score threshold", where)
            continue
        if not np.isfinite(box).all() or box[2] <= 0 or box[3] <= 0:
            report.add("degenerate box", f"{where}: bbox {box.tolist()}")
            continue
        center, scale = box_to_center_scale(box, aspect_ratio)
        records.append(
            PersonRecord(
                key=f"{key_prefix}{int(det['image_id'])}n{index}",
                image_path=image["path"],
                image_id=int(det["image_id"]),
                center=center,
                scale=scale,
                joints=np.zeros((k, 2), np.float32),
                visible=np.zeros(k, np.float32),
                score=score,
                extra={"bbox": box.tolist(), "width": image["width"], "height": image["height"]},
            )
        )
    return records, report, kset
