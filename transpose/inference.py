"""Top-down inference on whole images: crop each person box, run the model (flip test), decode with DARK.

Used by `transpose explain`, by evaluation during training and by `transpose predict`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from transpose.codec import flip_test
from transpose.crops import person_crops
from transpose.keypoints import KeypointSet


def normalize(crops_rgb: np.ndarray, mean, std) -> torch.Tensor:
    """uint8 [N, h, w, 3] RGB -> float [N, 3, h, w], /255 then ImageNet mean/std."""
    x = torch.from_numpy(np.ascontiguousarray(crops_rgb)).float().div_(255.0)
    x = (x - torch.tensor(mean)) / torch.tensor(std)
    return x.permute(0, 3, 1, 2).contiguous()


@dataclass
class Prediction:
    keypoints: np.ndarray  # [N, K, 2] image coordinates
    scores: np.ndarray  # [N, K] heatmap maxima
    heatmaps: np.ndarray  # [N, K, H, W] (flip-averaged)
    centers: np.ndarray  # [N, 2]
    scales: np.ndarray  # [N, 2]


@torch.no_grad()
def crop_heatmaps(
    model: torch.nn.Module, crops_rgb: np.ndarray, keypoint_set: KeypointSet, flip: bool = True
) -> np.ndarray:
    """Heatmaps [N, K, H, W] of one batch of uint8 crops [N, h, w, 3] (flip-averaged when `flip`)."""
    cfg = model.data_config
    device = next(model.parameters()).device
    x = normalize(crops_rgb, cfg.mean, cfg.std).to(device)
    out = flip_test(model, x, keypoint_set.flip_pairs) if flip else model(x)
    return out.float().cpu().numpy()


@torch.no_grad()
def predict_boxes(
    model: torch.nn.Module,
    image_rgb: np.ndarray,
    boxes,
    keypoint_set: KeypointSet,
    flip: bool = True,
    dark: bool = True,
    batch_size: int = 32,
) -> Prediction:
    """Pose of each [x, y, w, h] box of one image, in image coordinates (`keypoint_set`: the model's, from its
    card; its flip pairs drive the flip test)."""
    cfg = model.data_config
    centers, scales, crops = person_crops(image_rgb, boxes, cfg.image_size)
    hm_h, hm_w = cfg.heatmap_size
    heatmaps = [
        crop_heatmaps(model, crops[start : start + batch_size], keypoint_set, flip)
        for start in range(0, len(crops), batch_size)
    ]
    heatmaps = np.concatenate(heatmaps) if heatmaps else np.zeros((0, cfg.num_keypoints, hm_h, hm_w), np.float32)
    keypoints, scores = cfg.codec().decode(heatmaps, centers, scales, dark=dark)
    return Prediction(keypoints, scores, heatmaps, centers, scales)
