"""Validation as the reference does it: flip test, DARK decoding, back to image coordinates; each rank predicts
its share, rank 0 scores the gathered predictions with the dataset kind's scorer (`transpose.evaluation.protocols`:
COCO OKS AP after rescoring and OKS-NMS, or MPII PCKh)."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch

from transpose.codec import HeatmapCodec, flip_test
from transpose.engine.distributed import broadcast_object, gather_objects, is_main
from transpose.evaluation.protocols import Predictions, Scorer
from transpose.keypoints import KeypointSet


@torch.no_grad()
def predict(
    model: torch.nn.Module,
    batches: Iterable[dict],
    keypoint_set: KeypointSet,
    codec: HeatmapCodec,
    device: torch.device | str = "cpu",
    flip: bool = True,
) -> Predictions:
    """Keypoints in image coordinates for every valid sample of `batches` (this rank's share).

    Each batch needs image, center, scale, geom (score at 6, area at 7), ids and optionally valid; the flip test
    swaps `keypoint_set`'s flip pairs and `codec` (the model's) decodes.
    """
    model.eval()
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


def gather_predictions(local: Predictions) -> Predictions:
    """All ranks' predictions concatenated (on every rank)."""
    every = [p for p in gather_objects(local) if len(p["keypoints"])]
    return {k: np.concatenate([p[k] for p in every]) for k in local} if every else local


def validate(
    model: torch.nn.Module,
    batches: Iterable[dict],
    scorer: Scorer,
    keypoint_set: KeypointSet,
    codec: HeatmapCodec,
    device: torch.device | str = "cpu",
    flip: bool = True,
) -> tuple[dict[str, float], list[dict]]:
    """Predict this rank's share, gather, score on rank 0; every rank returns rank 0's metrics."""
    preds = gather_predictions(predict(model, batches, keypoint_set, codec, device, flip))
    return broadcast_object(scorer(preds) if is_main() else None)
