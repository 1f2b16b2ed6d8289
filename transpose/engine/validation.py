"""Validation as the reference does it: flip test, DARK decoding, back to image coordinates, then COCO OKS AP
(rescoring + OKS-NMS) or MPII PCKh. Each rank predicts its share; rank 0 scores the gathered predictions."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np
import torch

from transpose.codec import HeatmapCodec, flip_test
from transpose.engine.distributed import broadcast_object, gather_objects, is_main
from transpose.evaluation import CocoGroundTruth, MpiiGroundTruth, evaluate_coco, evaluate_mpii, rescore_and_nms
from transpose.keypoints import KeypointSet


@torch.no_grad()
def predict(
    model: torch.nn.Module,
    batches: Iterable[dict],
    keypoint_set: KeypointSet,
    input_size: tuple[int, int],
    device: torch.device | str = "cpu",
    flip: bool = True,
) -> dict[str, np.ndarray]:
    """Keypoints in image coordinates for every valid sample of `batches` (this rank's share).

    Each batch needs image, center, scale, geom (score at 6, area at 7), ids and optionally valid.
    """
    model.eval()
    codec = HeatmapCodec.for_model(input_size)
    parts: dict[str, list] = {k: [] for k in ("keypoints", "maxvals", "box_scores", "areas", "image_ids", "ann_ids")}
    for batch in batches:
        images = batch["image"].to(device, non_blocking=True)
        heatmaps = flip_test(model, images, keypoint_set.flip_pairs) if flip else model(images)
        keep = batch["valid"].bool().cpu().numpy() if "valid" in batch else np.ones(len(images), bool)
        centers, scales = batch["center"].cpu().numpy(), batch["scale"].cpu().numpy()
        keypoints, maxvals = codec.decode(heatmaps.float().cpu().numpy(), centers, scales)
        geom, ids = batch["geom"].cpu().numpy(), batch["ids"].cpu().numpy()
        parts["keypoints"].append(keypoints[keep])
        parts["maxvals"].append(maxvals[keep])
        parts["box_scores"].append(geom[keep, 6])
        parts["areas"].append(geom[keep, 7])
        parts["image_ids"].append(ids[keep, 0])
        parts["ann_ids"].append(ids[keep, 1])
    return {k: np.concatenate(v) if v else np.zeros((0,)) for k, v in parts.items()}


def gather_predictions(local: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """All ranks' predictions concatenated (on every rank)."""
    every = [p for p in gather_objects(local) if len(p["keypoints"])]
    return {k: np.concatenate([p[k] for p in every]) for k in local} if every else local


def coco_scorer(gt: CocoGroundTruth) -> Callable[[dict[str, np.ndarray]], tuple[dict[str, float], list[dict]]]:
    """Predictions -> (COCO metrics, COCO results list) after the reference's rescoring and OKS-NMS."""

    def score(preds: dict[str, np.ndarray]) -> tuple[dict[str, float], list[dict]]:
        results = rescore_and_nms(
            preds["keypoints"],
            preds["maxvals"],
            preds["box_scores"],
            preds["areas"],
            preds["image_ids"],
            gt.keypoint_set.sigmas,
            category_id=gt.category_id,
        )
        metrics, _ = evaluate_coco(gt, results)
        return metrics, results

    return score


def mpii_scorer(gt: MpiiGroundTruth) -> Callable[[dict[str, np.ndarray]], tuple[dict[str, float], list[dict]]]:
    """Predictions (annotation id = index in the ground truth) -> (PCKh metrics, per-person joints)."""

    def score(preds: dict[str, np.ndarray]) -> tuple[dict[str, float], list[dict]]:
        joints = np.zeros((gt.num_people, 16, 2))
        order = preds["ann_ids"].astype(int)
        joints[order] = preds["keypoints"]
        metrics = evaluate_mpii(joints, gt)
        return metrics, [{"annotation_id": int(i), "joints": joints[i].tolist()} for i in range(gt.num_people)]

    return score


def validate(
    model: torch.nn.Module,
    batches: Iterable[dict],
    scorer: Callable,
    keypoint_set: KeypointSet,
    input_size: tuple[int, int],
    device: torch.device | str = "cpu",
    flip: bool = True,
) -> tuple[dict[str, float], list[dict]]:
    """Predict this rank's share, gather, score on rank 0; every rank returns rank 0's metrics."""
    preds = gather_predictions(predict(model, batches, keypoint_set, input_size, device, flip))
    return broadcast_object(scorer(preds) if is_main() else None)
