"""Flip test: average the heatmaps of an image and of its mirror image (no one-pixel shift)."""

from __future__ import annotations

import torch


def flip_back(heatmaps: torch.Tensor, flip_pairs) -> torch.Tensor:
    """Mirror heatmaps [N, K, H, W] predicted on a flipped image back, swapping left/right channels."""
    order = list(range(heatmaps.shape[1]))
    for a, b in flip_pairs:
        order[a], order[b] = order[b], order[a]
    return heatmaps.flip(-1)[:, order]


@torch.no_grad()
def flip_test(model: torch.nn.Module, images: torch.Tensor, flip_pairs) -> torch.Tensor:
    """0.5 * (f(x) + flip_back(f(flip(x)))), with both halves in one batch."""
    n = images.shape[0]
    out = model(torch.cat([images, images.flip(-1)]))
    return 0.5 * (out[:n] + flip_back(out[n:], flip_pairs))
