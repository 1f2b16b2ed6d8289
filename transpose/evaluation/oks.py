"""Object keypoint similarity and the reference's hard OKS-NMS, vectorised in numpy; and the finiteness check
every evaluator runs on predictions (a NaN OKS counts as a match in pycocotools, a NaN joint as a miss)."""

from __future__ import annotations

import numpy as np


class NonFiniteError(ValueError):
    """A prediction, score or ground-truth number that is NaN or infinite; the message names the sample and the
    value. Scoring it would give a wrong number (pycocotools counts a NaN OKS as a match)."""


def non_finite_name(value: float) -> str:
    """'NaN', 'inf' or '-inf'."""
    return "NaN" if value != value else ("inf" if value > 0 else "-inf")


def first_non_finite(values) -> tuple[int, ...] | None:
    """The index of the first NaN or infinite element of `values` (row-major), or None when all are finite."""
    array = np.asarray(values, dtype=np.float64)
    bad = np.argwhere(~np.isfinite(array))
    return tuple(int(i) for i in bad[0]) if len(bad) else None


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
