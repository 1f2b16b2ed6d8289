"""A split's shards checked against their manifest before training: each tar and index file of the size and
sha256 written, nothing missing, nothing extra. A damaged byte (a flipped bit in a JPEG's scan data, swapped
index offsets) would otherwise pair wrong pixels with the labels, silently, in both loaders.

Hashing a COCO-sized split takes a while, so what was verified is cached by (size, mtime, ctime, inode) per file
outside the shards folder (a DVC output must not change): `$TRANSPOSE_CACHE` or `~/.cache/transpose`,
`verified/`. A clean restart re-hashes nothing; a file touched or replaced since is hashed again.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from dataops.shards.manifest import manifest_path, read_manifest
from transpose.hashing import file_sha256


class ShardError(ValueError):
    """Shards that do not match their manifest or index; the message names the file and says to re-shard."""


@dataclass
class Verification:
    checked: list[str] = field(default_factory=list)  # files compared with the manifest
    hashed: list[str] = field(default_factory=list)  # of those, the ones hashed now (the rest: cached)


def cache_dir() -> Path:
    return Path(os.environ.get("TRANSPOSE_CACHE", Path.home() / ".cache" / "transpose")) / "verified"


def _reshard(split: str) -> str:
    return f"re-shard the '{split}' split (dvc repro shard, or delete the split's tars and run the shard stage)"


def verify_shards(shard_dir: str | Path, split: str) -> Verification:
    """Check every tar and .idx of `split` against `{split}-manifest.json`; a ShardError naming the first
    file that differs. Files already verified at their current size and mtime are not hashed again."""
    shard_dir = Path(shard_dir).resolve()
    manifest = read_manifest(shard_dir, split)
    expected: dict[Path, tuple[int, str]] = {}
    for entry in manifest.raw.get("shards", []):
        tar = shard_dir / entry["shard"]
        expected[tar] = (int(entry["bytes"]), entry["sha256"])
        expected[tar.with_suffix(".idx")] = (int(entry["index_bytes"]), entry["index_sha256"])
    on_disk = set(shard_dir.glob(f"{split}-*.tar")) | set(shard_dir.glob(f"{split}-*.idx"))
    extra = sorted(on_disk - set(expected))
    if extra:
        raise ShardError(
            f"{extra[0]} is not in {manifest_path(shard_dir, split)} (a shard of another run?): remove it, or "
            + _reshard(split)
        )
    cache_file = cache_dir() / (hashlib.sha256(str(shard_dir / split).encode()).hexdigest()[:20] + ".json")
    try:
        cache = json.loads(cache_file.read_text())
    except (OSError, ValueError):
        cache = {}
    cache = cache if isinstance(cache, dict) else {}
    report = Verification()
    for path, (size, sha) in sorted(expected.items()):
        report.checked.append(path.name)
        if not path.is_file():
            raise ShardError(f"{path} is missing (listed in {manifest.path}): " + _reshard(split))
        stat = path.stat()
        if stat.st_size != size:
            what = "empty (0 bytes)" if stat.st_size == 0 else f"{stat.st_size} bytes, {size} when written"
            raise ShardError(f"{path} is {what}: the file was truncated or replaced; " + _reshard(split))
        seen = [size, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_ino, sha]  # ctime: no tool can set it back
        if cache.get(path.name) == seen:
            continue
        report.hashed.append(path.name)
        if file_sha256(path) != sha:
            raise ShardError(
                f"{path} does not match its sha256 in {manifest.path}: its bytes changed after it was written "
                "(a damaged disk or copy, or an edited file); " + _reshard(split)
            )
        cache[path.name] = seen
    if report.hashed:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache_file.with_name(f"{cache_file.name}.{os.getpid()}.partial")
        tmp.write_text(json.dumps(cache))
        os.replace(tmp, cache_file)
    return report
