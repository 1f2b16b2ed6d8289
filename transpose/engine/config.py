"""Training configuration: the paper's recipe as defaults, every knob a field (params.yaml maps onto it)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from transpose.models.dropout import MASK_SOURCES
from transpose.models.transformer import ATTENTION_KINDS


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 230  # 230 (R) / 240 (H) in the paper
    lr: float = 1e-4  # Adam, no weight decay
    lr_end: float = 1e-5  # cosine to this, stepped per epoch (CosineAnnealingLR, T_max = epochs)
    warmup_steps: int = 0  # linear warm-up (not in the paper; helps tiny models leave the all-zero plateau)
    head_lr: float | None = None  # transfer: lr of the new final layer (others get `lr`); None: one lr for all
    weight_decay: float = 0.0
    sigma: float = 2.0  # Gaussian target sigma (heatmap pixels)
    seed: int = 22
    zero_stage: int = 0  # DeepSpeed ZeRO 0/1/2
    precision: str = "fp32"  # fp32 | bf16 | fp16 (dynamic loss scaling)
    grad_clip: float = 0.0  # 0: off (the reference does not clip)
    sync_bn: bool = False  # SyncBatchNorm across ranks
    freeze_bn: bool = False  # BatchNorm in eval mode (running statistics fixed)
    dropout: float | None = None  # None keeps the model's (0.1); 0 for exact multi-process equivalence tests
    channels_last: bool = True  # NHWC convolutions (1.2x faster steps on CPU; docs/benchmarks.md); false: NCHW
    dropout_masks: str = "numpy"  # CPU dropout masks drawn by NumPy (faster; docs/benchmarks.md) | "torch"
    attention: str = "fused"  # no L x L matrix kept (tiled on CPU) | "explicit": the reference's, for comparisons
    checkpoint_every_steps: int = 0  # also save every N optimizer steps (0: epoch ends only)
    keep_checkpoints: int = 2
    keep_previous_runs: int = 2  # checkpoint folders of earlier runs (another fingerprint) kept aside
    val_every_epochs: int = 1
    flip_test: bool = True
    log_every_steps: int = 10
    nonfinite_loss: str = "stop"  # a NaN/inf loss: "stop" (error, last good checkpoint kept) | "skip" the step

    def __post_init__(self) -> None:
        checks = {
            "epochs": (self.epochs >= 1, "must be at least 1"),
            "lr": (self.lr > 0, "must be positive"),
            "lr_end": (0 <= self.lr_end <= self.lr, "must be in [0, lr]"),
            "warmup_steps": (self.warmup_steps >= 0, "must be at least 0"),
            "head_lr": (self.head_lr is None or self.head_lr > 0, "must be positive (or null)"),
            "weight_decay": (self.weight_decay >= 0, "must be at least 0"),
            "sigma": (self.sigma > 0, "must be positive"),
            "zero_stage": (self.zero_stage in (0, 1, 2), "must be 0, 1 or 2"),
            "precision": (self.precision in ("fp32", "bf16", "fp16"), "must be fp32, bf16 or fp16"),
            "grad_clip": (self.grad_clip >= 0, "must be at least 0 (0: off)"),
            "dropout": (self.dropout is None or 0 <= self.dropout < 1, "must be in [0, 1) (or null)"),
            "dropout_masks": (self.dropout_masks in MASK_SOURCES, f"must be {' or '.join(MASK_SOURCES)}"),
            "attention": (self.attention in ATTENTION_KINDS, f"must be {' or '.join(ATTENTION_KINDS)}"),
            "checkpoint_every_steps": (self.checkpoint_every_steps >= 0, "must be at least 0 (0: epoch ends)"),
            "keep_checkpoints": (self.keep_checkpoints >= 1, "must be at least 1"),
            "keep_previous_runs": (self.keep_previous_runs >= 0, "must be at least 0"),
            "val_every_epochs": (self.val_every_epochs >= 1, "must be at least 1"),
            "log_every_steps": (self.log_every_steps >= 1, "must be at least 1"),
            "nonfinite_loss": (self.nonfinite_loss in ("stop", "skip"), "must be stop or skip"),
        }
        for key, (ok, rule) in checks.items():
            if not ok:
                raise ValueError(f"{key}: {rule}, got {getattr(self, key)!r}")

    def lr_factor(self, step: int, steps_per_epoch: int) -> float:
        """Multiplier of each group's base lr at an optimizer step: warm-up, then cosine by epoch."""
        epoch = step // max(steps_per_epoch, 1)
        floor = self.lr_end / self.lr
        cosine = floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(epoch, self.epochs) / self.epochs))
        if self.warmup_steps and step < self.warmup_steps:
            return cosine * (step + 1) / self.warmup_steps
        return cosine
