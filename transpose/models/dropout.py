"""Dropout whose masks are drawn by NumPy on CPU: the same semantics as nn.Dropout, a third of its cost there.

Each element is kept with probability 1 - p (to 2^-16) and scaled by 1 / (1 - p), as `F.dropout`. torch's CPU
`bernoulli_` costs about 10 ns an element; 16-bit words of NumPy's SFC64 generator, compared straight into a
float mask, cost about 1.5 ns. The masks follow torch's global generator (one seed drawn a call), so a seeded or
resumed run draws the same masks. On other devices (CUDA), or with `set_dropout_masks(model, "torch")`,
this is `F.dropout`.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn


def keep_words(seed: int, stream: int, count: int, p: float) -> np.ndarray:
    """[count] float32: 1.0 where an element is kept (probability 1 - p, to 2^-16), else 0.0, drawn from the
    SFC64 stream (seed, stream)."""
    words = np.random.SFC64([seed, stream]).random_raw((count + 3) // 4).view(np.uint16)[:count]
    keep = np.empty(count, dtype=np.float32)
    np.greater_equal(words, np.uint16(min(round(p * 2**16), 2**16 - 1)), out=keep, casting="unsafe")
    return keep


def draw_seed() -> int:
    """A seed for one call's masks, from torch's global generator."""
    return int(torch.randint(0, 2**62, (1,)).item())


MASK_SOURCES = ("numpy", "torch")


def dropout(x: Tensor, p: float, training: bool = True, masks: str = "numpy") -> Tensor:
    """`F.dropout(x, p, training)`, with the mask drawn by NumPy when x is on the CPU and masks is "numpy"."""
    if not training or p == 0.0 or x.device.type != "cpu" or masks == "torch":
        return F.dropout(x, p, training)
    if not 0.0 < p < 1.0:
        raise ValueError(f"dropout probability must be in [0, 1), got {p}")
    keep = keep_words(draw_seed(), 0, x.numel(), p)
    keep *= np.float32(1.0 / (1.0 - p))
    mask = torch.from_numpy(keep).view(x.shape).to(x.dtype)
    return x * mask


class Dropout(nn.Dropout):
    """nn.Dropout (same parameters, repr and isinstance), drawing its CPU masks with `dropout`."""

    dropout_masks = "numpy"  # or "torch": see set_dropout_masks

    def forward(self, x: Tensor) -> Tensor:
        if self.inplace:
            return super().forward(x)
        return dropout(x, self.p, self.training, self.dropout_masks)


def set_dropout_masks(model: nn.Module, source: str) -> nn.Module:
    """Where every dropout of `model` draws its CPU masks: "numpy" (the default, faster) or "torch" (torch's
    generator: `bernoulli_` for activations, `torch.rand` for attention tiles; slower, for comparisons)."""
    if source not in MASK_SOURCES:
        raise ValueError(f"dropout mask source {source!r}: use one of {', '.join(MASK_SOURCES)}")
    for module in model.modules():
        if hasattr(module, "dropout_masks"):
            module.dropout_masks = source
    return model
