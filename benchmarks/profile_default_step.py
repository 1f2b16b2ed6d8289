"""Where the default model's bare train step goes, op class by op class, in each formulation issue 17 went
through: how much of the step is matrix products (convolutions, linear layers, attention), which run near the
core's GEMM rate, and how much is the rest, which a faster formulation can still remove.

Command (writes the `default_profile` section of docs/benchmarks.md; about 2 minutes on 2 cores):

    .venv/bin/python benchmarks/profile_default_step.py

The step is bench_default_step.py's (the params.yaml `pretrain` model, input size and batch; forward + 0.5 * MSE
+ backward + Adam, dropout 0.1, 1 thread), profiled by torch.profiler over a few steps after warm-up, each
formulation in a fresh process, rounds alternating. An op's self time goes to its class; the optimizer's ops to
"optimizer"; a phase's time in no op (Python, the NumPy-drawn activation dropout masks) to "outside ops".
The profiler adds some time of its own to every op, so the steps here are slower than unprofiled ones; the
shares are what this measures.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from datetime import datetime, timezone
from pathlib import Path

import torch
import yaml

from bench_default_step import BEFORE, FORMULATIONS
from bench_train_step import Config, make_step
from measure import matmul_gflops
from report import DEFAULT_REPORT, REPO_ROOT, cpu_description, write_section

SECTION = "default_profile"
DEFAULT = list(FORMULATIONS)[-1]  # the default's formulation (NHWC, tiled attention, NumPy masks)
WARMUP, STEPS = 3, 5
PHASES = ("forward", "backward", "optimizer")
MATRIX_CLASSES = ("convolutions", "linear layers (mm, addmm)", "attention products (bmm)")
CLASSES = (
    *MATRIX_CLASSES,
    "softmax",
    "attention tiles: masks, Python",
    "dropout masks drawn by torch",
    "normalisation (batch, layer)",
    "other elementwise, copies",
    "optimizer (Adam)",
    "outside ops (Python, NumPy masks)",
)
SHORT_NAMES = {  # column headings
    "before issue 17 (NCHW, explicit attention, torch masks)": "before (NCHW, explicit, torch masks)",
    "NHWC, explicit attention, torch masks": "NHWC, explicit, torch masks",
    "NHWC, tiled attention, torch masks": "NHWC, tiled, torch masks",
    "the default (NHWC, tiled attention, NumPy masks)": "the default",
}


def op_class(name: str) -> str:
    """The class of an aten op (or autograd node) by its name."""
    if "conv" in name:
        return "convolutions"
    if name in ("aten::mm", "aten::addmm"):
        return "linear layers (mm, addmm)"
    if name in ("aten::bmm", "aten::baddbmm"):
        return "attention products (bmm)"
    if "softmax" in name:
        return "softmax"
    if name.startswith("_BlockedAttention"):
        return "attention tiles: masks, Python"
    if "bernoulli" in name or name in ("aten::rand", "aten::uniform_"):
        return "dropout masks drawn by torch"
    if "batch_norm" in name or "layer_norm" in name:
        return "normalisation (batch, layer)"
    return "other elementwise, copies"


def profile_cell(section: dict, formulation: str) -> dict:
    """Inside the cell's process: ms per step by class, the matrix products' GFLOP/s and the step's ms."""
    channels_last, attention, masks = FORMULATIONS[formulation]
    config = Config(section["model"], tuple(section["image_size"]), section["batch_size"], "train")
    torch.set_num_threads(1)
    gemm = matmul_gflops()
    step = make_step(config, attention, channels_last=channels_last, dropout_masks=masks, scope=phase_scope)
    for _ in range(WARMUP):
        step()
    unprofiled = []
    for _ in range(STEPS):
        start = time.perf_counter()
        step()
        unprofiled.append(1e3 * (time.perf_counter() - start))
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], with_flops=True) as prof:
        start = time.perf_counter()
        for _ in range(STEPS):
            step()
        wall_ms = 1e3 * (time.perf_counter() - start) / STEPS
    ms, flops = classify(prof.events())
    return {
        "ms": {k: v / STEPS for k, v in ms.items()},
        "flops": {k: v / STEPS for k, v in flops.items()},
        "step_ms": wall_ms,
        "unprofiled_ms": statistics.median(unprofiled),
        "gemm_gflops": gemm,
    }


def phase_scope(name: str):
    return torch.profiler.record_function(f"phase:{name}")


def classify(events) -> tuple[dict[str, float], dict[str, float]]:
    """Self ms and FLOPs per class over the profiled events; each phase's time in no op is "outside ops"."""
    ms: dict[str, float] = defaultdict(float)
    flops: dict[str, float] = defaultdict(float)
    for event in events:
        if event.name.startswith("phase:"):
            ms["outside ops (Python, NumPy masks)"] += event.self_cpu_time_total / 1e3
            continue
        phase = enclosing_phase(event)
        if phase is None:  # the profiler's own events between steps
            continue
        cls = "optimizer (Adam)" if phase == "optimizer" else op_class(event.name)
        ms[cls] += event.self_cpu_time_total / 1e3
        flops[cls] += getattr(event, "flops", 0) or 0
    return ms, flops


def enclosing_phase(event) -> str | None:
    parent = event.cpu_parent
    while parent is not None:
        if parent.name.startswith("phase:"):
            return parent.name.removeprefix("phase:")
        parent = parent.cpu_parent
    return None


def launch(section: dict, formulation: str) -> dict:
    cell = json.dumps({"section": section, "formulation": formulation})
    done = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--cell", cell], cwd=REPO_ROOT, capture_output=True, text=True
    )
    if done.returncode != 0:
        raise SystemExit(f"{formulation}: the cell failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def median_cell(cells: list[dict]) -> dict:
    """Per class, per figure: the median over the rounds."""
    return {
        "ms": {c: statistics.median(cell["ms"].get(c, 0.0) for cell in cells) for c in CLASSES},
        "flops": {c: statistics.median(cell["flops"].get(c, 0.0) for cell in cells) for c in CLASSES},
        "step_ms": statistics.median(cell["step_ms"] for cell in cells),
        "unprofiled_ms": statistics.median(cell["unprofiled_ms"] for cell in cells),
        "gemm_gflops": statistics.median(cell["gemm_gflops"] for cell in cells),
    }


def render(section: dict, results: dict[str, dict], rounds: int, started: datetime, elapsed_s: float) -> str:
    h, w = section["image_size"]
    names = list(results)
    rows = []
    for cls in CLASSES:
        cells = []
        for name in names:
            ms, total = results[name]["ms"][cls], sum(results[name]["ms"].values())
            cells.append(f"{ms:.1f} ({100 * ms / total:.0f}%)" if ms >= 0.05 else "-")
        rows.append(f"| {cls} | {' | '.join(cells)} |")
    totals = [sum(results[name]["ms"].values()) for name in names]
    rows.append(f"| **step (sum)** | {' | '.join(f'**{t:.1f}**' for t in totals)} |")
    unprofiled = " | ".join(f"{results[name]['unprofiled_ms']:.1f}" for name in names)
    rows.append(f"| step without the profiler | {unprofiled} |")
    default, before_ms = results[DEFAULT], results[BEFORE]["unprofiled_ms"]
    default_total = sum(default["ms"].values())
    matrix_ms = sum(default["ms"][c] for c in MATRIX_CLASSES)
    bound = before_ms / matrix_ms
    rates = []
    for cls in MATRIX_CLASSES[1:]:  # the profiler counts FLOPs of mm, addmm and bmm in both passes
        if default["flops"][cls] and default["ms"][cls]:
            rates.append(f"{cls.split(' (')[0]} {default['flops'][cls] / default['ms'][cls] / 1e6:.0f}")
    return "\n".join(
        [
            "## Where the default's train step goes, op class by op class",
            "",
            f"- Command: `.venv/bin/python benchmarks/profile_default_step.py` ({started:%Y-%m-%d %H:%M} UTC, "
            f"{elapsed_s / 60:.1f} min)",
            f"- `{section['model']}` at {h}x{w}, batch {section['batch_size']}, forward + 0.5 * MSE + backward + Adam, "
            f"dropout 0.1, 1 thread; {cpu_description()}",
            f"- ms per step under torch.profiler ({STEPS} steps after {WARMUP} and {STEPS} timed without it), self "
            f"time per op class, the median of {rounds} rounds (each formulation a fresh process, rounds "
            "alternating). The profiler adds a fixed cost to every op, so formulations of many small ops look slower "
            "under it than they run; the last row is the median step without it",
            "",
            f"| op class | {' | '.join(SHORT_NAMES.get(n, n) for n in names)} |",
            f"|---|{'---:|' * len(names)}",
            *rows,
            "",
            f"In the default, the matrix products are **{100 * matrix_ms / default_total:.0f}%** of the step "
            f"({matrix_ms:.1f} ms of {default_total:.1f}). Their rates, GFLOP/s: {', '.join(rates) or 'not counted'}, "
            f"against "
            f"{default['gemm_gflops']:.0f} for a 1024 x 1024 GEMM on the same thread. Were everything else free, "
            f"the step would be at most **{bound:.2f}x** faster than before issue 17 ({before_ms:.1f} ms "
            "unprofiled), with no change to the model's arithmetic.",
        ]
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", type=Path, default=REPO_ROOT / "params.yaml")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", type=Path, default=DEFAULT_REPORT)
    parser.add_argument("--cell", help=argparse.SUPPRESS)  # internal: one profiled cell, as JSON
    args = parser.parse_args()
    if args.cell:
        cell = json.loads(args.cell)
        print(json.dumps(profile_cell(cell["section"], cell["formulation"])), flush=True)
        return 0
    pretrain = yaml.safe_load(args.params.read_text())["pretrain"]
    section = {key: pretrain[key] for key in ("model", "image_size", "batch_size")}
    started, t0 = datetime.now(timezone.utc), time.perf_counter()
    cells: dict[str, list[dict]] = {name: [] for name in FORMULATIONS}
    for round_ in range(args.rounds):
        for name in FORMULATIONS:
            cells[name].append(launch(section, name))
            print(f"round {round_ + 1} {name:55s} {cells[name][-1]['step_ms']:5.0f} ms a profiled step", flush=True)
    results = {name: median_cell(runs) for name, runs in cells.items()}
    write_section(args.out, SECTION, render(section, results, args.rounds, started, time.perf_counter() - t0))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
