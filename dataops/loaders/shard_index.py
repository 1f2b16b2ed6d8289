"""Random access to WebDataset shards through their DALI index files, and the per-rank epoch order.

Both loaders read the same shards and the same `.idx` files: the DALI reader natively, the PyTorch twin
through `ShardIndex` (seek + read of each member), which also makes the twin's sampler exact: every sample
once per epoch over all ranks, and the same number of steps on every rank (the last batch is padded with
samples from the start of the permutation, as DALI's pad_last_batch does).
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dataops.datasets.records import SkipReport

MEMBERS = ("jpg", "geom.f32", "kpt.f32", "half.f32", "ids.i64")


@dataclass(frozen=True)
class SampleLocation:
    tar: Path
    key: str
    members: dict[str, tuple[int, int]]  # ext -> (offset, size)


def find_shards(shard_dir: str | Path, split: str) -> list[Path]:
    """The split's tars in order; an error that says what to do when there are none."""
    shard_dir = Path(shard_dir)
    tars = sorted(shard_dir.glob(f"{split}-*.tar"))
    if not tars:
        raise FileNotFoundError(
            f"no shards '{split}-*.tar' in {shard_dir}: write them first (dataops.shards.write_shards, "
            "or the DVC shard stage)"
        )
    missing = [t.name for t in tars if not t.with_suffix(".idx").is_file()]
    if missing:
        raise FileNotFoundError(f"{shard_dir}: shards without their DALI index (.idx): {missing[:5]}")
    return tars


def read_index(tar: Path) -> list[SampleLocation]:
    lines = tar.with_suffix(".idx").read_text().splitlines()
    if not lines or not lines[0].startswith("v1.2 "):
        raise ValueError(f"{tar.with_suffix('.idx')} is not a DALI webdataset index (expected 'v1.2 N' first)")
    samples = []
    for number, line in enumerate(lines[1:], start=2):
        fields = line.split()
        if len(fields) % 4:
            raise ValueError(f"{tar.with_suffix('.idx')} line {number}: expected groups of 'ext offset size name'")
        members = {fields[i]: (int(fields[i + 1]), int(fields[i + 2])) for i in range(0, len(fields), 4)}
        key = fields[3].split(".", 1)[0]
        samples.append(SampleLocation(tar, key, members))
    return samples


@dataclass
class ShardSet:
    """A split's shards checked against their indexes: the complete samples, and index files that list only
    those (for DALI, which cannot skip a sample): a truncated tar loses only the samples past its end."""

    tars: list[Path]
    index_paths: list[Path]
    samples: list[SampleLocation]
    report: SkipReport


def open_shards(shard_dir: str | Path, split: str) -> ShardSet:
    tars = find_shards(shard_dir, split)
    report = SkipReport()
    samples, index_paths = [], []
    repaired_dir: Path | None = None
    for tar in tars:
        entries = read_index(tar)
        size = tar.stat().st_size
        complete = [e for e in entries if all(off + n <= size for off, n in e.members.values())]
        for lost in entries[len(complete) :] if len(complete) < len(entries) else []:
            report.add("truncated shard", f"{tar} (sample {lost.key})")
        samples.extend(complete)
        if len(complete) == len(entries):
            index_paths.append(tar.with_suffix(".idx"))
            continue
        if repaired_dir is None:
            repaired_dir = Path(tempfile.mkdtemp(prefix="repaired-idx-"))
        lines = [" ".join(f"{ext} {off} {n} {e.key}.{ext}" for ext, (off, n) in e.members.items()) for e in complete]
        fixed = repaired_dir / tar.with_suffix(".idx").name
        fixed.write_text(f"v1.2 {len(lines)}\n" + "".join(line + "\n" for line in lines))
        index_paths.append(fixed)
    if not samples:
        raise FileNotFoundError(f"{shard_dir}: the '{split}' shards hold no complete sample ({report.summary()})")
    return ShardSet(tars, index_paths, samples, report)


class ShardIndex:
    """All samples of a list of shards, readable by position."""

    def __init__(self, samples: list[SampleLocation]):
        self.samples = samples
        self._handles: dict[Path, object] = {}

    def __len__(self) -> int:
        return len(self.samples)

    def read(self, i: int) -> dict[str, bytes]:
        location = self.samples[i]
        handle = self._handles.get(location.tar)
        if handle is None:
            handle = self._handles[location.tar] = open(location.tar, "rb")  # noqa: SIM115 - kept open per worker
        out = {"__key__": location.key}
        for ext in MEMBERS:
            if ext not in location.members:
                raise KeyError(f"{location.tar}: sample {location.key} has no '{ext}' member")
            offset, size = location.members[ext]
            handle.seek(offset)
            payload = handle.read(size)
            if len(payload) != size:
                raise OSError(f"{location.tar}: truncated at sample {location.key} ({ext})")
            out[ext] = payload
        return out

    def __getstate__(self):  # file handles do not cross process boundaries
        return {"samples": self.samples, "_handles": {}}


def epoch_order(num_samples: int, epoch: int, seed: int, shuffle: bool, rank: int, world_size: int) -> np.ndarray:
    """This rank's sample positions for an epoch: a seeded permutation padded to a multiple of world_size,
    then every world_size-th element starting at rank."""
    order = np.random.default_rng([seed, epoch]).permutation(num_samples) if shuffle else np.arange(num_samples)
    padded = -(-num_samples // world_size) * world_size
    order = np.concatenate([order, order[: padded - num_samples]])
    return order[rank::world_size]
