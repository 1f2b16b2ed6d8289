"""Position embeddings for a H x W grid of tokens, stored as the reference does: [H*W, 1, d].

Differences from DETR's PositionEmbeddingSine: no padding mask, no -0.5 offset (y = (i+1)/(H+eps)*2pi),
and the table is made once per grid instead of on every forward pass.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

POS_EMBEDDINGS = ("sine", "learnable", "none")


def sine_position_embedding(
    height: int, width: int, d_model: int, temperature: float = 10000.0, scale: float = 2 * math.pi
) -> Tensor:
    """2D sine embedding of the paper's Appendix A, as implemented by the reference.

    The first d/2 channels encode y, the last d/2 encode x; within each half, channels interleave
    [sin, cos, sin, cos, ...]. Tokens are in row-major order. Returns [H*W, 1, d].
    """
    if d_model % 4:
        raise ValueError(f"sine position embedding needs d_model divisible by 4, got {d_model}")
    eps = 1e-6
    half = d_model // 2
    y = torch.arange(1, height + 1, dtype=torch.float32) / (height + eps) * scale  # [H]
    x = torch.arange(1, width + 1, dtype=torch.float32) / (width + eps) * scale  # [W]
    k = torch.arange(half, dtype=torch.float32)
    dim_t = temperature ** (2 * torch.div(k, 2, rounding_mode="floor") / half)  # [d/2]

    def encode(coord: Tensor) -> Tensor:  # [n] -> [n, d/2], interleaved sin/cos
        angles = coord[:, None] / dim_t
        return torch.stack((angles[:, 0::2].sin(), angles[:, 1::2].cos()), dim=2).flatten(1)

    pos_y = encode(y)[:, None, :].expand(height, width, half)
    pos_x = encode(x)[None, :, :].expand(height, width, half)
    return torch.cat((pos_y, pos_x), dim=2).reshape(height * width, 1, d_model)


def learnable_position_embedding(height: int, width: int, d_model: int) -> Tensor:
    """N(0, 1) initial table, [H*W, 1, d]."""
    return torch.randn(height * width, 1, d_model)


def resample_learnable(table: Tensor, old_grid: tuple[int, int], new_grid: tuple[int, int]) -> Tensor:
    """Bilinearly resample a learnable [h*w, 1, d] table from one token grid to another."""
    (h0, w0), (h1, w1) = old_grid, new_grid
    if (h0, w0) == (h1, w1):
        return table
    d = table.shape[-1]
    grid = table.reshape(h0, w0, d).permute(2, 0, 1)[None]  # [1, d, h0, w0]
    grid = F.interpolate(grid, size=(h1, w1), mode="bilinear", align_corners=False)
    return grid[0].permute(1, 2, 0).reshape(h1 * w1, 1, d)
