"""The GPU check's configuration and findings: what a run checks and measures (its plan and tolerances), the
outcome of each check, the timed runs, and the time budget that bounds every phase (benchmarks/gpu_check.py)."""

from __future__ import annotations

import os
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from types import MappingProxyType


# ---- configuration ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Plan:
    """What one run checks and measures: the model, the sizes, the step counts and the time budget."""

    name: str
    model: str
    image_size: tuple[int, int]  # (h, w)
    synthetic_images: int  # 640x480 COCO-style images made for the throughput shards
    workers: int  # DALI threads / twin DataLoader workers
    loader_batch: int
    loader_samples: int  # timed samples per loader (fewer if the phase's time is spent)
    loss_batch: int  # batch of the loss-agreement runs
    loss_steps: int  # their optimizer steps
    train_batch: int  # batch of the throughput runs
    warmup_steps: int  # untimed steps before each timed run
    timed_steps: int  # at most this many timed steps (fewer if the phase's time is spent)
    timed_s: float  # at most this long per timed training run (NVML samples the utilisation every 0.1 s)
    eval_batch: int
    eval_warmup: int
    eval_timed: int
    budget_s: float


@dataclass(frozen=True)
class Tolerances:
    """What each correctness check allows. The loader's are tests/test_data.py's (DALI against the twin)."""

    grey_mean: float = 0.05  # mean |crop difference| in grey levels (the test's `grey_levels.mean() < 0.05`)
    grey_max: float = 2.0  # max |crop difference| in grey levels: OpenCV's 5-bit bilinear weights give +-1
    joints_px: float = 1e-3  # max |joint difference| in heatmap pixels
    targets: float = 1e-4  # max |target heatmap difference|
    # first steps' losses, relative to the CPU fp32 run: fp32 on a GPU runs cuDNN convolutions in TF32 by
    # default (10-bit mantissa), bf16 keeps an 8-bit mantissa through the whole forward and backward pass
    loss_fp32: float = 1e-2
    loss_bf16: float = 5e-2
    # eval heatmaps, max |difference| / max |heatmap| of the first: the device's fp32 against the CPU's (TF32
    # convolutions), the explicit-attention path against SDPA on the device, bf16 against fp32 on the device
    eval_device_rel: float = 1e-2
    eval_explicit_rel: float = 1e-3
    eval_bf16_rel: float = 5e-2

    def loss_rel(self, precision: str) -> float:
        return getattr(self, f"loss_{precision}")


WORKERS = max(1, min(8, (os.cpu_count() or 2) - 2))
FULL = Plan(
    name="full",
    model="transpose_h_a6",
    image_size=(256, 192),
    synthetic_images=800,  # about 2000 people: an epoch lasts a few seconds of GPU training
    workers=WORKERS,
    loader_batch=64,
    loader_samples=4096,
    loss_batch=2,  # small: the CPU reference trains the paper's model on the CPU
    loss_steps=3,
    train_batch=32,
    warmup_steps=5,
    timed_steps=2000,  # a bound; timed_s ends the timed steps first
    timed_s=20.0,
    eval_batch=64,
    eval_warmup=3,
    eval_timed=30,
    budget_s=480.0,
)
TINY = Plan(
    name="tiny",
    model="transpose_r_tiny",
    image_size=(64, 48),  # the training tests' size: CI's 2 cores
    synthetic_images=8,
    workers=1,
    loader_batch=8,
    loader_samples=48,
    loss_batch=4,
    loss_steps=3,
    train_batch=4,
    warmup_steps=1,
    timed_steps=3,
    timed_s=60.0,
    eval_batch=4,
    eval_warmup=1,
    eval_timed=2,
    budget_s=300.0,  # a bound for a slow shared host; it takes well under a minute
)
TOLERANCES = Tolerances()
# each phase's share of the time budget (the reference run includes DeepSpeed's first-time JIT build of its CPU
# communication op, about a minute on a fresh machine)
PHASE_SHARES = MappingProxyType(
    {"data": 0.06, "parity": 0.08, "loaders": 0.08, "reference": 0.32, "losses": 0.1, "training": 0.26, "eval": 0.06}
)
# tests/test_data.py's FIXED_DRAWS: scale multiplier, rotation, flip, half-body, centre shift
FIXED_DRAWS = (
    (1.1, 30.0, True, 0, (0.0, 0.0)),
    (0.8, -20.0, False, 0, (0.0, 0.0)),
    (1.0, 0.0, False, 1, (0.0, 0.0)),
    (1.25, 60.0, True, 2, (0.0, 0.0)),
    (0.9, -40.0, True, 1, (0.12, -0.16)),
)


# ---- results ---------------------------------------------------------------------------------------------------
@dataclass
class Check:
    """A correctness check's outcome: what was compared, the tolerance, what was measured."""

    name: str
    passed: bool
    compared: str
    tolerance: str
    measured: str
    warning: bool = False  # reported as WARN when it does not pass, and never fails the run

    @property
    def verdict(self) -> str:
        return "PASS" if self.passed else ("WARN" if self.warning else "FAIL")

    def line(self) -> str:
        return f"{self.verdict} {self.name}: {self.measured} (tolerance {self.tolerance})"


@dataclass
class TrainRate:
    """One timed training run."""

    setting: str
    samples_per_s: float
    steps: int
    peak: str  # peak memory, with what it is
    busy: float | None  # mean GPU utilisation in %, None when not measured
    optimizer: str  # the DeepSpeed engine's optimizer and the process group's backend
    loss: float  # the timed epoch's mean loss
    loader: str  # what fed it


@dataclass
class Outcome:
    """Everything a run found, for the printout and the report."""

    checks: list[Check] = field(default_factory=list)
    loaders: dict[str, tuple[float, int]] = field(default_factory=dict)  # method -> (samples/s, samples)
    training: list[TrainRate] = field(default_factory=list)
    evals: dict[str, float] = field(default_factory=dict)  # setting -> samples/s
    losses: dict[str, list[float]] = field(default_factory=dict)  # cpu fp32 / device fp32 / device bf16
    phases: dict[str, float] = field(default_factory=dict)  # phase -> seconds
    notes: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(c.passed or c.warning for c in self.checks)

    def add(self, check: Check) -> None:
        self.checks.append(check)
        print(check.line(), flush=True)

    def note(self, text: str) -> None:
        self.notes.append(text)
        print(f"NOTE {text}", flush=True)


def guarded(name: str, outcome: Outcome, fn: Callable[[], object]) -> object:
    """fn(), or None when it raises: the error becomes a FAIL check naming `name` (the run goes on)."""
    try:
        return fn()
    except Exception as err:
        traceback.print_exc()
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:300]
        outcome.add(Check(name, False, f"{name} ran", "no error", f"{type(err).__name__}: {first}"))
        return None


@dataclass
class Budget:
    """The run's time: each phase may use its share of `total_s` (and never more than what is left)."""

    total_s: float
    start: float = field(default_factory=time.perf_counter)

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def deadline(self, phase: str) -> float:
        """perf_counter() by which `phase`, starting now, should be done."""
        now = time.perf_counter()
        return min(now + PHASE_SHARES[phase] * self.total_s, self.start + self.total_s)
