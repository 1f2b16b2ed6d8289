"""The promotion lock: an exclusive fcntl lock beside the tracking store (or at TRANSPOSE_PROMOTE_LOCK)."""

from __future__ import annotations

import fcntl
import hashlib
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlparse

LOCK_ENV = "TRANSPOSE_PROMOTE_LOCK"


def lock_path(tracking_uri: str) -> Path:
    """TRANSPOSE_PROMOTE_LOCK, else a file beside a local store, else one in this machine's temp folder."""
    if os.environ.get(LOCK_ENV):
        return Path(os.environ[LOCK_ENV])
    parsed = urlparse(tracking_uri)
    if parsed.scheme == "sqlite":
        db = tracking_uri.removeprefix("sqlite:///").split("?", 1)[0]
        return Path(db).with_name(Path(db).name + ".promote.lock")
    if parsed.scheme in ("", "file"):
        return Path(parsed.path if parsed.scheme else tracking_uri) / "promote.lock"
    digest = hashlib.sha256(tracking_uri.encode()).hexdigest()[:12]
    return Path(tempfile.gettempdir()) / f"transpose-promote-{digest}.lock"


@contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive fcntl lock on `path` (created if needed), held for the block."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
