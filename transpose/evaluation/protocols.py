"""Dataset kinds: the one table of how a keypoint dataset is scored.

    coco   any COCO-format keypoint file (COCO, OCHuman, PoseTrack-style, a set of one's own): OKS AP with
           pycocotools, after the reference's rescoring and OKS-NMS; needs per-keypoint OKS sigmas
    mpii   MPII's json + gt_valid.mat: PCKh (head-normalised), MPII's 16 joints in MPII's order

The shard manifest records a split's kind and keypoint set, the model card carries them on, and every stage
that scores predictions asks this table how (`dataset_kind(name).scorer(ground_truth)`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from transpose.evaluation.coco import CocoFormatError, evaluate_coco, load_coco_ground_truth, rescore_and_nms
from transpose.evaluation.mpii import MpiiFormatError, evaluate_mpii, load_mpii_ground_truth
from transpose.evaluation.oks import NonFiniteError, first_non_finite, non_finite_name
from transpose.keypoints import MPII, KeypointSet

Predictions = dict[str, np.ndarray]  # keypoints [N, K, 2], maxvals [N, K], box_scores, areas, image_ids, ann_ids
Scorer = Callable[[Predictions], tuple[dict[str, float], list[dict]]]
PREDICTION_ARRAYS = (
    ("keypoints", "keypoint"),
    ("maxvals", "heatmap maximum of keypoint"),
    ("box_scores", "box score"),
    ("areas", "box area"),
)


def check_predictions(preds: Predictions, keypoint_set: KeypointSet | None = None, where: str = "predictions"):
    """Every keypoint, heatmap maximum, box score and area finite; else a NonFiniteError naming the sample (its
    image and annotation ids), the keypoint and the value. One inf heatmap pixel is enough to make DARK's
    decoding give a NaN keypoint, and pycocotools would count its NaN OKS as a match."""
    for key, what in PREDICTION_ARRAYS:
        if key not in preds or not len(preds[key]):
            continue
        values = np.asarray(preds[key], dtype=np.float64)
        bad = first_non_finite(values)
        if bad is None:
            continue
        i = bad[0]
        ids = [
            f"{name} {int(preds[k][i])}"
            for k, name in (("image_ids", "image_id"), ("ann_ids", "annotation"))
            if len(preds.get(k, ())) > i
        ]
        label = what
        if len(bad) > 1:
            j = bad[1]
            name = keypoint_set.names[j] if keypoint_set is not None and j < keypoint_set.num_keypoints else None
            label = f"{what} {j}" + (f" ({name})" if name else "") + (f" {'xy'[bad[2]]}" if len(bad) > 2 else "")
        sample = f"sample {i}" + (f" ({', '.join(ids)})" if ids else "")
        raise NonFiniteError(
            f"{where}: {sample}: {label} is {non_finite_name(values[bad])}; the model's output is not finite (one "
            "inf or NaN heatmap pixel decodes to a NaN keypoint): check the run for divergence or fp16 overflow"
        )
    return preds


def _coco_ground_truth(path: str | Path, keypoint_set: KeypointSet):
    gt = load_coco_ground_truth(path, keypoint_set=keypoint_set)
    if gt.keypoint_set.sigmas is None:
        raise CocoFormatError(
            f"{path}: OKS needs per-keypoint sigmas and the keypoint set {keypoint_set.name!r} has none: give "
            "them in the file's category ('sigmas') or as the dataset's `sigmas` param"
        )
    return gt


def _coco_scorer(gt) -> Scorer:
    """Predictions -> (COCO metrics, COCO results list) after the reference's rescoring and OKS-NMS."""

    def score(preds: Predictions) -> tuple[dict[str, float], list[dict]]:
        check_predictions(preds, gt.keypoint_set)
        results = rescore_and_nms(
            preds["keypoints"],
            preds["maxvals"],
            preds["box_scores"],
            preds["areas"],
            preds["image_ids"],
            gt.keypoint_set.sigmas,
            category_id=gt.category_id,
        )
        metrics, _ = evaluate_coco(gt, results, source="predictions")
        return metrics, results

    return score


def _mpii_ground_truth(path: str | Path, keypoint_set: KeypointSet):
    if keypoint_set.names != MPII.names:
        raise ValueError(
            f"{path}: PCKh (gt_valid.mat) scores MPII's 16 joints in MPII's order, not the keypoint set "
            f"{keypoint_set.name!r} ({keypoint_set.num_keypoints} keypoints): use a COCO-format dataset for it"
        )
    return load_mpii_ground_truth(path)


def _mpii_scorer(gt) -> Scorer:
    """Predictions (annotation id = index in the ground truth) -> (PCKh metrics, per-person joints)."""

    def score(preds: Predictions) -> tuple[dict[str, float], list[dict]]:
        check_predictions(preds, MPII)
        joints = np.zeros((gt.num_people, 16, 2))
        order = np.asarray(preds["ann_ids"]).astype(int)
        outside = order[(order < 0) | (order >= gt.num_people)]
        if len(outside):
            raise MpiiFormatError(
                f"predictions: annotation id {int(outside[0])} is not a person of {gt.source} (0..{gt.num_people - 1})"
            )
        joints[order] = preds["keypoints"]
        metrics = evaluate_mpii(joints, gt)
        return metrics, [{"annotation_id": int(i), "joints": joints[i].tolist()} for i in range(gt.num_people)]

    return score


@dataclass(frozen=True)
class DatasetKind:
    """How one kind of keypoint dataset is scored."""

    name: str
    summary: str
    gate_metric: str  # the metric that selects the best epoch and gates promotion
    headline_metrics: tuple[str, ...]  # what people compare (DVC metrics, the registry's version tags)
    load_ground_truth: Callable[[str | Path, KeypointSet], object]
    make_scorer: Callable[[object], Scorer]

    def scorer(self, ground_truth: str | Path, keypoint_set: KeypointSet) -> Scorer:
        """The scorer of predictions against the ground truth file, for this keypoint set."""
        return self.make_scorer(self.load_ground_truth(ground_truth, keypoint_set))

    def headline(self, metrics: dict[str, float]) -> dict[str, float]:
        """The metrics people compare, in the table's order."""
        return {k: metrics[k] for k in self.headline_metrics if k in metrics}


DATASET_KINDS: dict[str, DatasetKind] = {
    kind.name: kind
    for kind in (
        DatasetKind(
            name="coco",
            summary="COCO-format keypoints (COCO, OCHuman, PoseTrack, your own): OKS AP",
            gate_metric="AP",
            headline_metrics=("AP", "AP50", "AP75", "APm", "APl", "AR"),
            load_ground_truth=_coco_ground_truth,
            make_scorer=_coco_scorer,
        ),
        DatasetKind(
            name="mpii",
            summary="MPII (json + gt_valid.mat): PCKh",
            gate_metric="PCKh",
            headline_metrics=("PCKh", "PCKh_0.1"),  # per body part: the evaluation record, MLflow, the printout
            load_ground_truth=_mpii_ground_truth,
            make_scorer=_mpii_scorer,
        ),
    )
}


def dataset_kind(name: str, where: str = "dataset kind") -> DatasetKind:
    """The kind called `name`; any other name is an error listing the valid ones."""
    if name not in DATASET_KINDS:
        valid = "; ".join(f"{k} ({v.summary})" for k, v in DATASET_KINDS.items())
        raise ValueError(f"{where}: unknown dataset kind {name!r}; valid: {valid}")
    return DATASET_KINDS[name]
