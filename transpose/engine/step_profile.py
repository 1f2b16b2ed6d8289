"""Where a training step's time goes: wall time per phase, summed over an epoch, reported per step.

    profile = StepProfile()
    for batch in profile.iterate(loader):          # "loader": waiting for the next batch
        with profile.phase("forward"):
            ...
    profile.per_step_ms()                          # {"loader": 3.1, "forward": 120.4, ...}

A phase inside another (the gradient all-reduce inside DeepSpeed's backward, timed by wrapping the engine's
method with `profile.wrap`) is subtracted from the outer one, so the phases add up to the step's wall time.
On CUDA, pass `sync=torch.cuda.synchronize` so that a phase ends when its kernels do.
"""

from __future__ import annotations

import functools
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager

PHASES = ("loader", "targets", "forward", "backward", "allreduce", "optimizer", "logging", "checkpoint")


class StepProfile:
    def __init__(self, sync: Callable[[], None] | None = None):
        self.sync = sync
        self.seconds: dict[str, float] = defaultdict(float)
        self.steps = 0
        self._open: list[str] = []

    @contextmanager
    def phase(self, name: str):
        if self.sync is not None:
            self.sync()
        start = time.perf_counter()
        self._open.append(name)
        try:
            yield
        finally:
            if self.sync is not None:
                self.sync()
            elapsed = time.perf_counter() - start
            self._open.pop()
            self.seconds[name] += elapsed
            if self._open:  # a nested phase: its time is not also the outer phase's
                self.seconds[self._open[-1]] -= elapsed

    def iterate(self, iterable: Iterable) -> Iterator:
        """Yield from `iterable`, timing each wait for the next item as "loader" and counting steps."""
        iterator = iter(iterable)
        while True:
            with self.phase("loader"):
                try:
                    item = next(iterator)
                except StopIteration:
                    return
            self.steps += 1
            yield item

    def wrap(self, obj: object, method: str, name: str) -> None:
        """Time every call of `obj.method` as phase `name` (an instance attribute shadows the method)."""
        original = getattr(obj, method)

        @functools.wraps(original)
        def timed(*args, **kwargs):
            with self.phase(name):
                return original(*args, **kwargs)

        setattr(obj, method, timed)

    def per_step_ms(self) -> dict[str, float]:
        """Mean milliseconds per step of every phase seen (the known phases first, in step order)."""
        names = [p for p in PHASES if p in self.seconds] + sorted(set(self.seconds) - set(PHASES))
        return {p: 1e3 * self.seconds[p] / max(self.steps, 1) for p in names}

    def reset(self) -> None:
        self.seconds.clear()
        self.steps = 0
