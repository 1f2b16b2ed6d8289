"""Loaders from shards to training batches: the DALI pipeline and its PyTorch twin, and the torch-side targets."""

from dataops.loaders.common import LoaderConfig, crop_joints, make_targets
from dataops.loaders.torch_loader import torch_loader

__all__ = ["LoaderConfig", "crop_joints", "make_targets", "torch_loader"]
