"""The reference's JointsMSELoss with target weights."""

from __future__ import annotations

import torch


def weighted_mse_loss(pred: torch.Tensor, target: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """0.5 * mean over B*K*H*W of (w * (pred - target))^2; pred/target [B, K, H, W], weights [B, K]."""
    w = weights[..., None, None].to(pred.dtype)
    return 0.5 * ((w * (pred - target)) ** 2).mean()
