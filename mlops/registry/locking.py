"""Serialising the promoters of one registered model, on one machine or on many.

`registry_turn` is what makes promotion safe: a turn kept in the tracking store itself, as registered-model
tags, so promoters that share no filesystem (other machines, one tracking server) still take turns. MLflow has
no compare-and-set, only single-tag writes and reads, so the turn is Lamport's bakery over tags:

    1. write my ticket  transpose.ticket.<uuid> = {number: 0 (choosing), owner, alias, since, expires}
    2. read every live ticket; my number = 1 + the largest
    3. write my ticket again with that number (a heartbeat thread rewrites it with a later expiry)
    4. re-read the tickets until none is choosing and none has a smaller (number, uuid) than mine: my turn
    5. promote (checking before every write that my lease still holds), then delete my ticket

A promoter that had not written its ticket when I read them in step 4 reads mine in its step 2, so it draws a
larger number and waits for me; two that draw the same number are ordered by uuid. A ticket past its expiry
(its owner died) is ignored. A promoter gives up its turn when its own lease could have looked expired to the
others (it stalled, or its renewals failed) and refuses after a bounded wait with a `PromotionBusy` naming the
holder and its expiry. Expiries are wall-clock times, so promoters' clocks must agree to well within a third of
the lease (NTP does).

`file_lock` is the fast path on one machine: promoters there queue on an fcntl lock, not on the server.
"""

from __future__ import annotations

import fcntl
import getpass
import hashlib
import json
import os
import random
import socket
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar
from urllib.parse import urlparse

from mlops.registry.records import PromotionBusy, RegistryError
from mlops.registry.versions import registered_model, store_errors

if TYPE_CHECKING:
    from mlflow import MlflowClient

LOCK_ENV = "TRANSPOSE_PROMOTE_LOCK"
LEASE_ENV, WAIT_ENV = "TRANSPOSE_PROMOTE_LEASE", "TRANSPOSE_PROMOTE_WAIT"
LEASE_S, WAIT_S = 60.0, 300.0  # a ticket's lifetime without renewal; the longest wait for the turn
TICKET_PREFIX = "transpose.ticket."
T = TypeVar("T")


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
def file_lock(path: Path, timeout: float | None = None) -> Iterator[None]:
    """An exclusive fcntl lock on `path` (created if needed), held for the block; PromotionBusy after `timeout`
    seconds of waiting (None: wait as long as it takes)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as fh:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | (0 if deadline is None else fcntl.LOCK_NB))
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise PromotionBusy(
                        f"another promoter on this machine holds the promotion lock {path}; waited {timeout:.0f}s "
                        f"({WAIT_ENV}): retry when it is done"
                    ) from None
                time.sleep(0.1)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def seconds(env: str, default: float) -> float:
    """A positive number of seconds from `env`, else `default`."""
    raw = os.environ.get(env, "")
    try:
        value = float(raw) if raw else default
    except ValueError:
        raise RegistryError(f"{env}={raw!r}: expected a number of seconds") from None
    if value <= 0:
        raise RegistryError(f"{env}={raw!r}: must be positive")
    return value


def _utc(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).isoformat(timespec="seconds")


@dataclass(frozen=True)
class Ticket:
    """One promoter's place in the queue of a registered model (the value of its `transpose.ticket.<id>` tag)."""

    id: str
    number: int  # 0 while choosing
    owner: str  # user@host pid N
    alias: str
    since: float  # wall-clock seconds
    expires: float

    @property
    def key(self) -> str:
        return TICKET_PREFIX + self.id

    def before(self, other: Ticket) -> bool:
        return (self.number, self.id) < (other.number, other.id)

    def value(self) -> str:
        fields = {"number": self.number, "owner": self.owner, "alias": self.alias}
        return json.dumps({**fields, "since": self.since, "expires": self.expires, "until": _utc(self.expires)})

    @classmethod
    def parse(cls, key: str, value: str) -> Ticket | None:
        try:
            data = json.loads(value)
            return cls(key.removeprefix(TICKET_PREFIX), int(data["number"]), str(data["owner"]),
                       str(data["alias"]), float(data["since"]), float(data["expires"]))  # fmt: skip
        except (ValueError, KeyError, TypeError):
            return None

    def describe(self) -> str:
        state = "choosing its number" if self.number == 0 else f"number {self.number}"
        return (
            f"{self.owner} (ticket {self.id[:8]}, {state}, promoting @{self.alias} since {_utc(self.since)}, "
            f"lease until {_utc(self.expires)})"
        )


def tickets(client: MlflowClient, name: str) -> list[Ticket]:
    """Every ticket recorded on `name`, expired or not, oldest number first."""
    tags = registered_model(client, name).tags or {}
    found = [Ticket.parse(k, v) for k, v in tags.items() if k.startswith(TICKET_PREFIX)]
    return sorted((t for t in found if t is not None), key=lambda t: (t.number, t.id))


def _owner() -> str:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = str(os.getuid())
    return f"{user}@{socket.gethostname()} pid {os.getpid()}"


def _transient(call: Callable[[], T], attempts: int = 5) -> T:
    """`call()`, retried while the store says it is temporarily unavailable (a busy sqlite file)."""
    from mlflow.exceptions import MlflowException

    for attempt in range(attempts):
        try:
            return call()
        except MlflowException as err:
            busy = err.error_code == "TEMPORARILY_UNAVAILABLE" or "database is locked" in str(err)
            if not busy or attempt == attempts - 1:
                raise
            time.sleep(0.2 * (attempt + 1) * random.uniform(0.5, 1.5))
    raise AssertionError("unreachable")


class Turn:
    """One promoter's turn at changing `name`'s aliases and decisions: `acquire`, `check` before every write,
    `release` (see the module docstring for the protocol)."""

    def __init__(self, client: MlflowClient, name: str, alias: str, lease: float, wait: float, poll: float = 0.1):
        self.client, self.name, self.alias = client, name, alias
        self.lease, self.wait, self.poll = lease, wait, poll
        now = time.time()
        self.ticket = Ticket(uuid.uuid4().hex, 0, _owner(), alias, now, now + lease)
        self.lost = ""
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None

    def _write(self, ticket: Ticket) -> None:
        _transient(lambda: self.client.set_registered_model_tag(self.name, ticket.key, ticket.value()))
        self.ticket = ticket

    def _others(self) -> list[Ticket]:
        """The live tickets of the other promoters."""
        now = time.time()
        return [t for t in _transient(lambda: tickets(self.client, self.name)) if t.id != self.ticket.id
                and t.expires > now]  # fmt: skip

    def acquire(self) -> None:
        """Wait for this promoter's turn; PromotionBusy (ticket taken back) after `wait` seconds."""
        deadline = time.monotonic() + self.wait
        try:
            with store_errors(f"{self.name}@{self.alias}: taking a promotion ticket"):
                self._write(self.ticket)  # choosing
                number = 1 + max((t.number for t in self._others()), default=0)
                self._write(replace(self.ticket, number=number, expires=time.time() + self.lease))
            self._beat = threading.Thread(target=self._renew, name=f"promotion-lease-{number}", daemon=True)
            self._beat.start()
            delay = self.poll
            while True:
                with store_errors(f"{self.name}@{self.alias}: reading the promotion tickets"):
                    ahead = [t for t in self._others() if t.number == 0 or t.before(self.ticket)]
                self.check()
                if not ahead:
                    return
                if time.monotonic() > deadline:
                    first = min(ahead, key=lambda t: (t.number == 0, t.number, t.id))
                    raise PromotionBusy(
                        f"{self.name}@{self.alias}: {first.describe()} holds the promotion turn ({len(ahead)} "
                        f"promoter(s) ahead of this one); gave up after waiting {self.wait:.0f}s ({WAIT_ENV}, "
                        f"--wait). Retry when it is done; if that promoter died, its ticket (tag {first.key}) is "
                        f"ignored from {_utc(first.expires)}"
                    )
                time.sleep(delay * random.uniform(0.5, 1.5))
                delay = min(delay * 1.5, 0.5)
        except BaseException:
            self.release()
            raise

    def _renew(self) -> None:
        """Heartbeat: push the expiry forward every lease/6; stop for good once the lease may have lapsed."""
        while not self._stop.wait(self.lease / 6):
            if self._lapsed():
                return
            try:
                self._write(replace(self.ticket, expires=time.time() + self.lease))
            except Exception:  # the next beat retries; check() notices if the lease runs short
                continue

    def _lapsed(self) -> bool:
        left = self.ticket.expires - time.time()
        if left < self.lease / 3 and not self.lost:  # margin for clock skew between promoters
            self.lost = f"its lease had {max(left, 0):.0f}s of {self.lease:.0f}s left (stalled, or renewals failed)"
        return bool(self.lost)

    def check(self) -> None:
        """Raise unless this promoter still safely holds its turn: call before every write to the registry."""
        if self._lapsed():
            raise RegistryError(
                f"{self.name}@{self.alias}: this promoter lost its promotion turn: {self.lost}; another promoter "
                f"may have taken it, so it stopped before its next write. Rerun the promotion (raise {LEASE_ENV} "
                "if the holder's re-evaluation is slow)"
            )

    def release(self) -> None:
        """Stop the heartbeat and delete the ticket (left to expire if the store cannot be reached)."""
        self._stop.set()
        if self._beat is not None:
            self._beat.join(timeout=self.lease)  # a renewal stuck on a dead server: its ticket just expires
        with suppress(Exception):  # an undeleted ticket is ignored once it expires
            self.client.delete_registered_model_tag(self.name, self.ticket.key)


@contextmanager
def registry_turn(
    client: MlflowClient, name: str, alias: str, lease: float | None = None, wait: float | None = None
) -> Iterator[Turn]:
    """Hold the promotion turn of `name` for the block (lease: $TRANSPOSE_PROMOTE_LEASE or 60 s, renewed while
    held; wait: $TRANSPOSE_PROMOTE_WAIT or 300 s, then PromotionBusy)."""
    turn = Turn(client, name, alias, lease or seconds(LEASE_ENV, LEASE_S), wait or seconds(WAIT_ENV, WAIT_S))
    turn.acquire()
    try:
        yield turn
    finally:
        turn.release()
