"""Object keypoint similarity and the reference's hard OKS-NMS, vectorised in numpy."""

from __future__ import annotations

import numpy as np


def oks_one_to_many(
    g: np.ndarray, d: np.ndarray, area_g: float, area_d: np.ndarray, sigmas, in_vis_thre: float | None = None
) -> np.ndarray:
    """OKS of one pose g [K, 3] against poses d [M, K, 3], with the mean area of each pair as scale."""
    variances = (np.asarray(sigmas, dtype=np.float64) * 2) ** 2
    dx = d[..., 0] - g[None, :, 0]
    dy = d[..., 1] - g[None, :, 1]
    e = (dx**2 + dy**2) / variances / ((area_g + np.asarray(area_d, dtype=np.float64))[:, None] / 2 + np.spacing(1)) / 2
    terms = np.exp(-e)
    if in_vis_thre is None:
        return terms.mean(axis=1)
    mask = (g[None, :, 2] > in_vis_thre) & (d[..., 2] > in_vis_thre)
    counts = mask.sum(axis=1)
    return np.where(counts > 0, (terms * mask).sum(axis=1) / np.maximum(counts, 1), 0.0)


def oks_nms(
    keypoints: np.ndarray, scores: np.ndarray, areas: np.ndarray, threshold: float, sigmas, in_vis_thre=None
) -> list[int]:
    """Greedy hard NMS: keep the best pose, drop every other with OKS > threshold to a kept one.

    keypoints [N, K, 3], scores [N], areas [N] -> indices kept, best first.
    """
    order = np.asarray(scores).argsort()[::-1]  # as the reference: ties go to the later index
    keep: list[int] = []
    while order.size:
        i = int(order[0])
        keep.append(i)
        rest = order[1:]
        overlap = oks_one_to_many(keypoints[i], keypoints[rest], areas[i], areas[rest], sigmas, in_vis_thre)
        order = rest[overlap <= threshold]
    return keep
