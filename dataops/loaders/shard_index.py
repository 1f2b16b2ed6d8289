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
from dataops.shards.verify import ShardError

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
    """A tar's DALI index; a ShardError naming the file and line when it is not one (both loaders open
    shards through here, so both give the same answer)."""
    path = tar.with_suffix(".idx")
    fix = "re-shard this split (the shard stage rewrites the tar and its index)"
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise ShardError(f"{path}: unreadable DALI index ({err}): {fix}") from None
    header = lines[0].split() if lines else []
    if len(header) != 2 or header[0] != "v1.2" or not header[1].isdigit():
        raise ShardError(f"{path} is not a DALI webdataset index (expected 'v1.2 N' first): {fix}")
    if int(header[1]) != len(lines) - 1:
        raise ShardError(f"{path} announces {header[1]} samples and lists {len(lines) - 1}: {fix}")
    samples = []
    for number, line in enumerate(lines[1:], start=2):
        fields = line.split()
        try:
            if not fields or len(fields) % 4:
                raise ValueError("expected groups of 'ext offset size name'")
            members = {fields[i]: (int(fields[i + 1]), int(fields[i + 2])) for i in range(0, len(fields), 4)}
            if any(offset < 512 or offset % 512 or size < 0 for offset, size in members.values()):
                raise ValueError("offsets must be multiples of 512 past the first header, sizes at least 0")
        except ValueError as err:
            raise ShardError(f"{path} line {number}: {err}: {fix}") from None
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
        size = tar.stat().st_size
        if size == 0:
            raise ShardError(f"{tar} is empty (0 bytes): re-shard this split (the shard stage rewrites it)")
        entries = read_index(tar)
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
        """Sample i's members. Each is read with the tar header before it, which must name it (an index that
        does not match its tar is an error, not wrong pixels), and numeric members must be finite."""
        location = self.samples[i]
        handle = self._handles.get(location.tar)
        if handle is None:
            handle = self._handles[location.tar] = open(location.tar, "rb")  # noqa: SIM115 - kept open per worker
        out = {"__key__": location.key}
        where = f"{location.tar}: sample {location.key}"
        for ext in MEMBERS:
            if ext not in location.members:
                raise ShardError(f"{where} has no '{ext}' member: re-shard this split")
            offset, size = location.members[ext]
            handle.seek(offset - 512)
            raw = handle.read(512 + size)
            if len(raw) != 512 + size:
                raise ShardError(f"{where}: the tar ends inside its '{ext}' member: re-shard this split")
            name = raw[:100].split(b"\0", 1)[0].decode("utf-8", "replace")
            stored = raw[124:136].split(b"\0", 1)[0].strip()
            if name != f"{location.key}.{ext}" or not stored.isdigit() or int(stored, 8) != size:
                raise ShardError(
                    f"{where}: the index points its '{ext}' ({size} bytes) at the tar member {name!r}: the index "
                    "does not match the tar; re-shard this split"
                )
            payload = raw[512:]
            if ext.endswith(".f32") and (len(payload) % 4 or not np.isfinite(np.frombuffer(payload, "<f4")).all()):
                raise ShardError(f"{where}: '{ext}' holds NaN or inf (a damaged shard): re-shard this split")
            out[ext] = payload
        return out

    def __getstate__(self):  # file handles do not cross process boundaries
        return {"samples": self.samples, "_handles": {}}


def epoch_order(
    num_samples: int, epoch: int, seed: int, shuffle: bool, rank: int, world_size: int, multiple: int | None = None
) -> np.ndarray:
    """This rank's sample positions for an epoch: a seeded permutation padded to a multiple of `multiple`
    (default world_size; the loaders pass the global batch), then every world_size-th element from rank.
    Step s of every rank together covers positions [s * G, (s + 1) * G) of the padded permutation for a global
    batch G, whatever the number of ranks: a run resumed on another number of processes sees the same batches."""
    order = np.random.default_rng([seed, epoch]).permutation(num_samples) if shuffle else np.arange(num_samples)
    multiple = multiple or world_size
    padded = -(-num_samples // multiple) * multiple
    order = np.concatenate([order, np.resize(order, padded - num_samples)]) if padded > num_samples else order
    return order[rank::world_size]
