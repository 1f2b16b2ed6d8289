"""Loaders from shards to training batches: the DALI pipeline and its PyTorch twin, and the torch-side targets."""

from __future__ import annotations

from pathlib import Path

from dataops.loaders.common import LoaderConfig, crop_joints, make_targets
from dataops.loaders.torch_loader import TwinLoader, torch_loader

LOADERS = ("dali", "torch")


def make_loader(
    shard_dir: str | Path,
    split: str,
    config: LoaderConfig,
    rank: int = 0,
    world_size: int = 1,
    kind: str = "dali",
    device: str = "cpu",
    device_id: int | None = None,
):
    """A split's loader over this rank's share of the shards: `kind` dali (decoding on the GPU when `device` is
    cuda, `device_id` its CUDA index) or torch (the PyTorch twin, CPU)."""
    if kind not in LOADERS:
        raise ValueError(f"loader must be one of {', '.join(LOADERS)}, got {kind!r}")
    if kind == "torch":
        return TwinLoader(shard_dir, split, config, rank, world_size)
    from dataops.loaders.dali_loader import DaliLoader

    on_gpu = device.startswith("cuda")
    return DaliLoader(shard_dir, split, config, rank, world_size, "gpu" if on_gpu else "cpu", device_id)


__all__ = ["LOADERS", "LoaderConfig", "TwinLoader", "crop_joints", "make_loader", "make_targets", "torch_loader"]
