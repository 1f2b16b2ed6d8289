"""Training: DeepSpeed engine, resumable checkpoints, validation. Imports deepspeed only when training starts."""

from transpose.engine.config import TrainConfig
from transpose.engine.tracking import NullTracker, Tracker

__all__ = ["NullTracker", "Tracker", "TrainConfig"]
