"""Checkpoint folders that survive every fault: written, fsynced, sealed, then pointed at.

A checkpoint is a tag folder `checkpoints/e{epoch:04d}s{step:06d}/` (DeepSpeed's files and one `rank{r}.pt` per
rank). After every rank has written its files, the main process fsyncs them and seals the folder with
`complete.json`: the trainer's state at that moment (epoch, steps, best, history, world size, fingerprint) and
the size and sha256 of every file. Then `latest.json` is replaced atomically (fsync of the file and of the
folder before and after the rename). A folder without its seal, or whose files no longer match it, is never
resumed: resume takes the newest sealed, intact folder and says which one it skipped and why; a missing or
unreadable `latest.json` costs nothing as long as a sealed folder exists.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from transpose.hashing import file_sha256

POINTER = "latest.json"
SEAL = "complete.json"
TAG_PREFIX = "e"


class CheckpointError(RuntimeError):
    """A checkpoint could not be written or read; the message names the folder and what to do."""


def tag_name(epoch: int, step_in_epoch: int) -> str:
    return f"{TAG_PREFIX}{epoch:04d}s{step_in_epoch:06d}"


def is_tag(path: Path) -> bool:
    name = path.name
    return path.is_dir() and len(name) == 12 and name[0] == TAG_PREFIX and name[5] == "s" and name[1:5].isdigit()


def tags_newest_first(ckpt_dir: Path) -> list[Path]:
    """The tag folders, newest first (the name orders them: epoch, then step)."""
    if not ckpt_dir.is_dir():
        return []
    return sorted((p for p in ckpt_dir.iterdir() if is_tag(p)), key=lambda p: p.name, reverse=True)


def fsync_path(path: Path) -> None:
    """fsync a file or a folder (a folder's entry list: a rename inside it is durable after this)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_json_durably(path: Path, data: dict) -> None:
    """Write JSON to `path` through a temporary file, fsynced, renamed over it, the folder fsynced."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.partial")
    with open(tmp, "w") as f:
        f.write(json.dumps(data, indent=1))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_path(path.parent)


def _files(tag_dir: Path) -> list[Path]:
    return sorted(p for p in tag_dir.rglob("*") if p.is_file() and p.name != SEAL)


def seal(tag_dir: Path, state: dict) -> None:
    """fsync every file of a written tag folder, then record the state and each file's size and sha256."""
    files = {}
    for path in _files(tag_dir):
        fsync_path(path)
        files[str(path.relative_to(tag_dir))] = [path.stat().st_size, file_sha256(path)]
    for folder in {p.parent for p in _files(tag_dir)} | {tag_dir}:
        fsync_path(folder)
    write_json_durably(tag_dir / SEAL, {**state, "files": files})
    fsync_path(tag_dir.parent)


def check_sealed(tag_dir: Path) -> tuple[dict | None, str]:
    """(the sealed state, "") for an intact folder, else (None, why it cannot be resumed)."""
    if not tag_dir.is_dir():
        return None, "its folder is missing"
    try:
        state = json.loads((tag_dir / SEAL).read_text())
    except FileNotFoundError:
        return None, f"it has no {SEAL} (its save was interrupted)"
    except (OSError, UnicodeDecodeError, ValueError) as err:
        return None, f"its {SEAL} is unreadable ({err})"
    files = state.get("files") if isinstance(state, dict) else None
    if not isinstance(files, dict) or not files:
        return None, f"its {SEAL} lists no files"
    for name, (size, sha) in files.items():
        path = tag_dir / name
        if not path.is_file():
            return None, f"{name} is missing"
        if path.stat().st_size != size:
            return None, f"{name} is {path.stat().st_size} bytes, {size} when written (truncated or replaced)"
        if file_sha256(path) != sha:
            return None, f"{name} does not match its sha256 when written (the file was damaged)"
    return state, ""


@dataclass(frozen=True)
class Resumable:
    tag_dir: Path
    state: dict
    notes: list[str]  # what was skipped on the way, and why


def find_resumable(ckpt_dir: Path) -> Resumable | None:
    """The newest sealed, intact checkpoint (with notes on newer ones that were not), or None if there is none."""
    notes = []
    pointer = ckpt_dir / POINTER
    tags = tags_newest_first(ckpt_dir)
    if tags and not pointer.is_file():
        notes.append(f"{pointer} is missing: taking the newest complete checkpoint instead")
    elif tags:
        try:
            named = json.loads(pointer.read_text()).get("tag")
        except (OSError, UnicodeDecodeError, ValueError, AttributeError) as err:
            named = None
            notes.append(f"{pointer} is unreadable ({err}): taking the newest complete checkpoint instead")
        if named and not (ckpt_dir / named).is_dir():
            notes.append(f"{pointer} names {named}, whose folder is missing")
    for tag_dir in tags:
        state, why = check_sealed(tag_dir)
        if state is not None:
            return Resumable(tag_dir, state, notes)
        notes.append(f"skipped {tag_dir}: {why}")
    return None


def stale_tags(ckpt_dir: Path, keep: int, current: str) -> list[Path]:
    """What to remove after `current` was saved: sealed folders beyond the newest `keep` at or below it, the
    unsealed ones below it (saves cut short), and every folder above it (ones resume rejected as damaged)."""
    tags = tags_newest_first(ckpt_dir)
    newer = [t for t in tags if t.name > current]
    sealed = [t for t in tags if t.name <= current and (t / SEAL).is_file()]
    unsealed = [t for t in tags if t.name < current and not (t / SEAL).is_file()]
    return newer + sealed[keep:] + unsealed


def space_shortfall(ckpt_dir: Path, tag_dir: Path) -> str | None:
    """Before a save on several processes: an ENOSPC message when the disk has less room than the newest
    checkpoint took (plus 10%), else None. (One process relies on the write error itself.)"""
    sealed = [t for t in tags_newest_first(ckpt_dir) if (t / SEAL).is_file()]
    if not sealed:
        return None
    try:
        files = json.loads((sealed[0] / SEAL).read_text())["files"]
        need = int(1.1 * sum(size for size, _ in files.values()))
        free = shutil.disk_usage(ckpt_dir).free
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if free >= need:
        return None
    return (
        f"no space left on the device writing checkpoint {tag_dir} (ENOSPC: it needs about {need / 2**20:.1f} "
        f"MiB, {free / 2**20:.1f} MiB free on {ckpt_dir}): free space or point out_dir elsewhere, then run the "
        f"same command again to resume; nothing was written and {sealed[0]} stays the checkpoint to resume from"
    )


def remove_tag(tag_dir: Path) -> None:
    """Remove a tag folder, its seal first, so that a removal cut short never leaves a sealed partial folder."""
    (tag_dir / SEAL).unlink(missing_ok=True)
    shutil.rmtree(tag_dir, ignore_errors=True)


def describe_write_error(err: BaseException, tag_dir: Path) -> str:
    """A write failure in words: ENOSPC (also torch's bare 'unexpected pos' when the disk is full) with the path
    and the free space, otherwise the error itself."""
    text = f"{type(err).__name__}: {err}"
    try:
        free = shutil.disk_usage(tag_dir.parent).free
    except OSError:
        free = None
    full = getattr(err, "errno", None) in (errno.ENOSPC, errno.EDQUOT) or "No space left" in str(err)
    full = full or (free is not None and free < 1 << 20 and isinstance(err, (OSError, RuntimeError)))
    if full:
        left = f"{free / 2**20:.1f} MiB free" if free is not None else "no space"
        return (
            f"no space left on the device writing checkpoint {tag_dir} (ENOSPC, {left} on {tag_dir.parent}): "
            "free space or point out_dir elsewhere, then run the same command again to resume"
        )
    return f"writing checkpoint {tag_dir} failed ({text})"
