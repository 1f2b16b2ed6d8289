"""Gaussian heatmap targets of the reference (unquantised centre, full map), in numpy and torch.

Rules: a joint at float heatmap coordinates (x, y) gets exp(-((i-x)^2 + (j-y)^2) / (2 sigma^2)) over the
whole map (pixel centres at integers); its weight is its visibility, zeroed when its 3-sigma window lies
entirely outside the map: int(mu - 3 sigma) >= size or int(mu + 3 sigma + 1) < 0 (int() truncates);
the map is written only when the weight > 0.5.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # torch only for the *_torch functions: the numpy ones import without it
    import torch


def gaussian_targets(
    keypoints: np.ndarray, visible: np.ndarray, heatmap_size: tuple[int, int], sigma: float = 2.0
) -> tuple[np.ndarray, np.ndarray]:
    """keypoints [K, 2] in heatmap coordinates, visible [K] -> (heatmaps [K, H, W], weights [K]).

    heatmap_size is (w, h).
    """
    w, h = heatmap_size
    keypoints = np.asarray(keypoints, dtype=np.float32)
    weights = (np.asarray(visible, dtype=np.float32) > 0).astype(np.float32)
    heatmaps = np.zeros((len(keypoints), h, w), dtype=np.float32)
    xs = np.arange(w, dtype=np.float32)
    ys = np.arange(h, dtype=np.float32)[:, None]
    radius = 3 * sigma
    for k, (mx, my) in enumerate(keypoints):
        if int(mx - radius) >= w or int(my - radius) >= h or int(mx + radius + 1) < 0 or int(my + radius + 1) < 0:
            weights[k] = 0.0
        if weights[k] > 0.5:
            heatmaps[k] = np.exp(-((xs - mx) ** 2 + (ys - my) ** 2) / (2 * sigma**2))
    return heatmaps, weights


def gaussian_targets_torch(
    keypoints: torch.Tensor, visible: torch.Tensor, heatmap_size: tuple[int, int], sigma: float = 2.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Batched, on the device of `keypoints`: [B, K, 2], [B, K] -> ([B, K, H, W], [B, K]). Same rules."""
    import torch

    w, h = heatmap_size
    keypoints = keypoints.float()
    mx, my = keypoints[..., 0], keypoints[..., 1]
    radius = 3 * sigma
    outside = (
        (torch.trunc(mx - radius) >= w)
        | (torch.trunc(my - radius) >= h)
        | (torch.trunc(mx + radius + 1) < 0)
        | (torch.trunc(my + radius + 1) < 0)
    )
    weights = ((visible > 0) & ~outside).float()
    xs = torch.arange(w, dtype=torch.float32, device=keypoints.device)
    ys = torch.arange(h, dtype=torch.float32, device=keypoints.device)
    gx = torch.exp(-((xs - mx[..., None]) ** 2) / (2 * sigma**2))  # [B, K, W]
    gy = torch.exp(-((ys - my[..., None]) ** 2) / (2 * sigma**2))  # [B, K, H]
    heatmaps = gy[..., :, None] * gx[..., None, :] * weights[..., None, None]
    return heatmaps, weights
