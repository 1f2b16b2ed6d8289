"""Validation as the reference does it: flip test, DARK decoding, back to image coordinates; each rank predicts
its share, rank 0 scores the gathered predictions with the dataset kind's scorer (`transpose.evaluation.protocols`:
COCO OKS AP after rescoring and OKS-NMS, or MPII PCKh).

Predictions must be finite: one inf heatmap pixel becomes a NaN keypoint after DARK decoding, and a NaN OKS
counts as a match. `predict` stops at the first such sample with a NonFiniteError naming it (its image and
annotation ids, the keypoint, the heatmap's value); `validate` checks the gathered predictions on every rank, so
that all ranks stop together."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch

from transpose.codec import HeatmapCodec, flip_test
from transpose.engine.distributed import broadcast_object, gather_objects, is_main
from transpose.evaluation.oks import NonFiniteError
from transpose.evaluation.protocols import Predictions, Scorer, check_predictions
from transpose.keypoints import KeypointSet


@torch.no_grad()
def predict(
    model: torch.nn.Module,
    batches: Iterable[dict],
    keypoint_set: KeypointSet,
    codec: HeatmapCodec,
    device: torch.device | str = "cpu",
    flip: bool = True,
    check_finite: bool = True,
) -> Predictions:
    """Keypoints in image coordinates for every valid sample of `batches` (this rank's share).

    Each batch needs image, center, scale, geom (score at 6, area at 7), ids and optionally valid; the flip test
    swaps `keypoint_set`'s flip pairs and `codec` (the model's) decodes. With `check_finite`, a non-finite heatmap
    or prediction raises a NonFiniteError naming the sample.
    """
    model.eval()
    parts: dict[str, list] = {k: [] for k in ("keypoints", "maxvals", "box_scores", "areas", "image_ids", "ann_ids")}
    for batch in batches:
        images = batch["image"].to(device, non_blocking=True)
        heatmaps = flip_test(model, images, keypoint_set.flip_pairs) if flip else model(images)
        keep = batch["valid"].bool().cpu().numpy() if "valid" in batch else np.ones(len(images), bool)
        geom, ids = batch["geom"].cpu().numpy(), batch["ids"].cpu().numpy()
        if check_finite:
            check_heatmaps(heatmaps[torch.as_tensor(keep, device=heatmaps.device)], ids[keep], keypoint_set)
        centers, scales = batch["center"].cpu().numpy(), batch["scale"].cpu().numpy()
        keypoints, maxvals = codec.decode(heatmaps.float().cpu().numpy(), centers, scales)
        part = {
            "keypoints": keypoints[keep],
            "maxvals": maxvals[keep],
            "box_scores": geom[keep, 6],
            "areas": geom[keep, 7],
            "image_ids": ids[keep, 0],
            "ann_ids": ids[keep, 1],
        }
        if check_finite:
            check_predictions(part, keypoint_set)
        for key, values in part.items():
            parts[key].append(values)
    return {k: np.concatenate(v) if v else np.zeros((0,)) for k, v in parts.items()}


def check_heatmaps(heatmaps: torch.Tensor, ids: np.ndarray, keypoint_set: KeypointSet) -> None:
    """A NonFiniteError naming the first sample (image and annotation ids) and keypoint whose heatmap [N, K, H, W]
    holds a NaN or inf pixel."""
    finite = torch.isfinite(heatmaps).flatten(2).all(dim=2).cpu().numpy()  # [N, K]
    if finite.all():
        return
    i, j = (int(v) for v in np.argwhere(~finite)[0])
    pixels = heatmaps[i, j].float()
    value = "NaN" if torch.isnan(pixels).any() else ("inf" if (pixels == float("inf")).any() else "-inf")
    raise NonFiniteError(
        f"predictions: image_id {int(ids[i, 0])}, annotation {int(ids[i, 1])}: the heatmap of keypoint {j} "
        f"({keypoint_set.names[j] if j < keypoint_set.num_keypoints else '?'}) holds {value} pixels, which decode to "
        "a NaN keypoint: the model's output is not finite (check the run for divergence or fp16 overflow)"
    )


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
    """Predict this rank's share, gather, check on every rank that all are finite (NonFiniteError naming the
    sample otherwise, on every rank alike), score on rank 0; every rank returns rank 0's metrics."""
    local = predict(model, batches, keypoint_set, codec, device, flip, check_finite=False)
    return score_predictions(local, scorer, keypoint_set)


def score_predictions(
    local: Predictions, scorer: Scorer, keypoint_set: KeypointSet
) -> tuple[dict[str, float], list[dict]]:
    """What `validate` does after predicting: gather every rank's predictions, check on every rank that all are
    finite, score on rank 0 (for COCO: rescoring, OKS-NMS, COCOeval) and hand rank 0's (metrics, results) to all."""
    preds = check_predictions(gather_predictions(local), keypoint_set, where="validation predictions")
    return broadcast_object(scorer(preds) if is_main() else None)
