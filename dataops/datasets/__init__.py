"""Datasets read into PersonRecords: COCO-format keypoints (GT or detected boxes) and MPII."""

from dataops.datasets.coco import load_keypoint_file, read_coco_detections, read_coco_keypoints
from dataops.datasets.mpii import read_mpii
from dataops.datasets.records import PersonRecord, SkipReport

__all__ = [
    "PersonRecord",
    "SkipReport",
    "load_keypoint_file",
    "read_coco_detections",
    "read_coco_keypoints",
    "read_mpii",
]
