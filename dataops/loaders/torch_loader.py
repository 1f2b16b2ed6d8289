"""The PyTorch twin of the DALI loader: shards read through their DALI index, OpenCV decoding and affine warp
in DataLoader workers, the same augmentation distributions (dataops.augment) and the same batch layout.

Every sample's augmentation is drawn from an RNG seeded by (seed, epoch, position), so an epoch is the same
whatever the number of workers, and a run resumed at a step sees exactly the samples and draws it would have.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from dataops.augment import crop_matrix, draw_params
from dataops.loaders.common import LoaderConfig
from dataops.loaders.shard_index import ShardIndex, ShardSet, epoch_order, open_shards


def decode_sample(raw: dict[str, bytes], config: LoaderConfig, rng: np.random.Generator | None) -> dict:
    """One stored sample -> the crop and its numbers (numpy), as the DALI graph computes them."""
    h, w = config.input_size
    geom = np.frombuffer(raw["geom.f32"], "<f4")
    kpt = np.frombuffer(raw["kpt.f32"], "<f4").reshape(-1, 3)
    half = np.frombuffer(raw["half.f32"], "<f4")
    options = {}
    if half[8] > 0:
        options[1] = (half[0:2], half[2:4])
    if half[9] > 0:
        options[2] = (half[4:6], half[6:8])
    params = draw_params(rng, config.augment, geom[0:2], geom[2:4], int(half[10]), options, config.fixed)
    image = cv2.imdecode(np.frombuffer(raw["jpg"], np.uint8), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    if image is None:
        raise ValueError(f"sample {raw['__key__']}: undecodable image in the shard")
    image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    matrix = crop_matrix(params.center, params.scale, params.rotation, params.flip, (w, h))
    offset = geom[4:6].astype(np.float64)
    region_matrix = matrix.copy()
    region_matrix[:, 2] += matrix[:, :2] @ offset  # region pixel q = image pixel q + offset
    crop = cv2.warpAffine(image, region_matrix, (w, h), flags=cv2.INTER_LINEAR, borderValue=(0, 0, 0))
    return {
        "crop": crop,
        "kpt": kpt.copy(),
        "matrix": matrix.astype(np.float32),
        "flip": np.float32(params.flip),
        "geom": geom.copy(),
        "center": params.center.astype(np.float32),
        "scale": params.scale.astype(np.float32),
        "ids": np.frombuffer(raw["ids.i64"], "<i8").copy(),
    }


class ShardDataset(Dataset):
    """Map-style view of shards: item (position, epoch, valid) -> normalised crop and numbers."""

    def __init__(self, shards: ShardSet, config: LoaderConfig):
        self.index = ShardIndex(shards.samples)
        self.skipped = shards.report
        self.config = config
        self.mean = np.asarray(config.mean, np.float32) * 255.0
        self.std = np.asarray(config.std, np.float32) * 255.0

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, item: tuple[int, int, bool]) -> dict:
        position, epoch, valid = item
        rng = np.random.default_rng([self.config.seed, epoch, position])
        sample = decode_sample(self.index.read(position), self.config, rng)
        crop = (sample.pop("crop").astype(np.float32) - self.mean) / self.std
        sample["image"] = np.ascontiguousarray(crop.transpose(2, 0, 1))
        sample["valid"] = np.float32(valid)
        return sample


class EpochSampler(Sampler):
    """This rank's (position, epoch, valid) items for the current epoch, from `start` (resume) on.

    The epoch's permutation is padded to a multiple of the global batch (`batch_size` x ranks) and dealt out
    round-robin, so global step s is the same samples on any number of ranks; with drop_last the incomplete
    last global batch is dropped instead."""

    def __init__(self, num_samples: int, rank: int, world_size: int, config: LoaderConfig):
        self.num_samples, self.rank, self.world_size, self.config = num_samples, rank, world_size, config
        self.global_batch = config.batch_size * world_size
        self.epoch = 0
        self.start = 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = epoch, start

    @property
    def per_rank(self) -> int:
        n, g = self.num_samples, self.global_batch
        steps = n // g if self.config.drop_last else -(-n // g)
        return steps * self.config.batch_size

    def _items(self) -> list[tuple[int, int, bool]]:
        order = epoch_order(
            self.num_samples,
            self.epoch,
            self.config.seed,
            self.config.shuffle,
            self.rank,
            self.world_size,
            self.global_batch,
        )[: self.per_rank]
        # position rank + i * world_size of the padded permutation is padding when beyond the data
        valid = [self.rank + i * self.world_size < self.num_samples for i in range(len(order))]
        return [(int(p), self.epoch, v) for p, v in zip(order, valid)][self.start :]

    def __iter__(self):
        return iter(self._items())

    def __len__(self) -> int:
        return self.per_rank - self.start


def torch_loader(
    shard_dir: str | Path, split: str, config: LoaderConfig, rank: int = 0, world_size: int = 1
) -> tuple[DataLoader, EpochSampler]:
    """DataLoader over a split's shards for one rank; call `sampler.set_epoch(e)` before each epoch."""
    shards = open_shards(shard_dir, split)
    if shards.report.total:
        print(f"{split} shards: {shards.report.summary()}")
    dataset = ShardDataset(shards, config)
    sampler = EpochSampler(len(dataset), rank, world_size, config)
    loader = DataLoader(
        dataset,
        batch_size=config.batch_size,
        sampler=sampler,
        num_workers=config.workers,
        collate_fn=_collate,
        drop_last=config.drop_last,
        persistent_workers=False,
        # a generator of its own: creating an iterator draws its worker seed from here, not from the global
        # torch RNG (which dropout uses and a checkpoint restores); augmentation is seeded per sample anyway
        generator=torch.Generator().manual_seed(config.seed),
    )
    return loader, sampler


def _collate(samples: list[dict]) -> dict[str, torch.Tensor]:
    return {key: torch.from_numpy(np.stack([s[key] for s in samples])) for key in samples[0]}


class TwinLoader:
    """The twin as a resumable epoch iterator: iterating yields the rest of the current epoch.

    Its position is the global step within the epoch, so it resumes on any number of ranks that keeps the
    global batch (`elastic`)."""

    elastic = True

    def __init__(self, shard_dir: str | Path, split: str, config: LoaderConfig, rank: int = 0, world_size: int = 1):
        self.loader, self.sampler = torch_loader(shard_dir, split, config, rank, world_size)
        self.micro_batch = config.batch_size
        self.epoch, self.step = 0, 0

    @property
    def global_batch(self) -> int:
        return self.sampler.global_batch

    @property
    def steps_per_epoch(self) -> int:
        return self.sampler.per_rank // self.micro_batch

    def __len__(self) -> int:
        return self.steps_per_epoch

    def __iter__(self):
        self.sampler.set_epoch(self.epoch, self.step * self.micro_batch)
        for batch in self.loader:
            self.step += 1
            yield batch
        self.epoch, self.step = self.epoch + 1, 0

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "step": self.step}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.step = int(state["epoch"]), int(state["step"])
