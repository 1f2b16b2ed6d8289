"""COCO OKS AP and MPII PCKh, as the TransPose reference evaluates them.

Malformed input is an error naming the file and the entry, never a raw traceback or a silently wrong number:
CocoFormatError (COCO keypoint / results files), MpiiFormatError (MPII json, gt_valid.mat, predictions),
NonFiniteError (a NaN/inf prediction, score or ground-truth number); all are ValueErrors.
"""

from transpose.evaluation.coco import (
    COCO_METRIC_NAMES,
    CocoFormatError,
    CocoGroundTruth,
    evaluate_coco,
    format_coco_table,
    ground_truth_as_results,
    load_coco_ground_truth,
    load_coco_results,
    rescore_and_nms,
)
from transpose.evaluation.mpii import (
    MPII_METRIC_NAMES,
    MpiiFormatError,
    MpiiGroundTruth,
    evaluate_mpii,
    format_mpii_table,
    load_mpii_ground_truth,
)
from transpose.evaluation.oks import NonFiniteError, oks_nms, oks_one_to_many

__all__ = [
    "COCO_METRIC_NAMES",
    "MPII_METRIC_NAMES",
    "CocoFormatError",
    "CocoGroundTruth",
    "MpiiFormatError",
    "MpiiGroundTruth",
    "NonFiniteError",
    "evaluate_coco",
    "evaluate_mpii",
    "format_coco_table",
    "format_mpii_table",
    "ground_truth_as_results",
    "load_coco_ground_truth",
    "load_coco_results",
    "load_mpii_ground_truth",
    "oks_nms",
    "oks_one_to_many",
    "rescore_and_nms",
]
