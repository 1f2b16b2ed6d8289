"""The default model's bare train step in each formulation issue 17 went through, alone and as two concurrent
processes, all in one run: what the model itself gained, without the loader, DeepSpeed or the noise of a
one-epoch pipeline run.

Command (writes the `default_step` section of docs/benchmarks.md; about 5 minutes on 2 cores):

    .venv/bin/python benchmarks/bench_default_step.py

The model, input size and batch are the params.yaml `pretrain` section's. A step is forward + 0.5 * MSE +
backward + Adam in training mode (dropout 0.1), 1 thread. Each cell is a fresh process timing 15 steps after 3
untimed ones (`bench_train_step.measure_cell`); "pair" runs two such processes at once, as the default's two
training processes share the 2 cores.
Rounds alternate the formulations, so a host that changes speed mid-run affects each alike. The speed-ups are of
the fastest step: on the shared 2-core hosts measured, a process's CPU time equals its wall time while its steps
still vary by 1.5x from minute to minute (the cores themselves run slower while neighbours load them), and the
fastest step moves least; the medians are shown beside.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import yaml

from bench_train_step import Config, measure_cell
from report import DEFAULT_REPORT, REPO_ROOT, cpu_description, write_section

# name -> (NHWC convolutions, attention, dropout masks): TrainConfig's channels_last, attention, dropout_masks
FORMULATIONS = {
    "before issue 17 (NCHW, explicit attention, torch masks)": (False, "explicit", "torch"),
    "NHWC, explicit attention, torch masks": (True, "explicit", "torch"),
    "NHWC, tiled attention, torch masks": (True, "fused", "torch"),
    "the default (NHWC, tiled attention, NumPy masks)": (True, "fused", "numpy"),
}
BEFORE = next(iter(FORMULATIONS))  # the speed-ups are against it
WARMUP, STEPS = 3, 15


def time_steps(model_name: str, image_size: tuple[int, int], batch: int, formulation: str) -> tuple[float, float]:
    """Inside the cell's process: the fastest and the median ms of a train step of the formulation."""
    channels_last, attention, masks = FORMULATIONS[formulation]
    config = Config(model_name, image_size, batch, "train")
    cell = measure_cell(config, attention, 1, WARMUP, STEPS, channels_last=channels_last, dropout_masks=masks)
    return 1e3 * min(cell.step_s), 1e3 * statistics.median(cell.step_s)


def launch(section: dict, formulation: str) -> subprocess.Popen:
    cell = json.dumps({"section": section, "formulation": formulation})
    cmd = [sys.executable, str(Path(__file__).resolve()), "--cell", cell]
    return subprocess.Popen(cmd, cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True)


def collect(process: subprocess.Popen) -> tuple[float, float]:
    out, _ = process.communicate()
    if process.returncode != 0:
        raise SystemExit(f"a cell failed (exit {process.returncode})")
    fastest, median = json.loads(out.strip().splitlines()[-1])
    return fastest, median


def measure(section: dict, formulation: str, processes: int) -> tuple[float, float]:
    """The fastest and the median step ms, each the mean over `processes` concurrent cells."""
    running = [launch(section, formulation) for _ in range(processes)]
    cells = [collect(p) for p in running]
    return statistics.mean(c[0] for c in cells), statistics.mean(c[1] for c in cells)


def render(section: dict, results: dict, rounds: int, started: datetime, elapsed_s: float) -> str:
    h, w = section["image_size"]

    def figures(name: str, mode: str) -> tuple[float, float]:  # the fastest and the median over the rounds
        cells = results[name][mode]
        return min(c[0] for c in cells), statistics.median(c[1] for c in cells)

    rows = []
    for name in results:
        cells = []
        for mode in ("alone", "pair"):
            (fastest, median), (before, _) = figures(name, mode), figures(BEFORE, mode)
            cells += [f"{fastest:.0f}", f"**{before / fastest:.2f}x**", f"{median:.0f}"]
        rows.append(f"| {name} | {' | '.join(cells)} |")
    return "\n".join(
        [
            "## The default's bare train step, formulation by formulation",
            "",
            f"- Command: `.venv/bin/python benchmarks/bench_default_step.py` ({started:%Y-%m-%d %H:%M} UTC, "
            f"{elapsed_s / 60:.1f} min)",
            f"- `{section['model']}` at {h}x{w}, batch {section['batch_size']}, forward + 0.5 * MSE + backward + Adam, "
            f"dropout 0.1, 1 thread; {cpu_description()}",
            f"- ms per step over {rounds} rounds of {STEPS} steps a cell: the fastest step (the speed-ups are its) and "
            "the median of the cells' medians; pair: two processes at once, the mean of the two",
            "",
            "| formulation | alone: fastest | speed-up | median | pair: fastest | speed-up | median |",
            "|---|---:|---:|---:|---:|---:|---:|",
            *rows,
        ]
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", type=Path, default=REPO_ROOT / "params.yaml")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=DEFAULT_REPORT)
    parser.add_argument("--cell", help=argparse.SUPPRESS)  # internal: one timed cell, as JSON
    args = parser.parse_args()
    if args.cell:
        cell = json.loads(args.cell)
        section = cell["section"]
        ms = time_steps(section["model"], tuple(section["image_size"]), section["batch_size"], cell["formulation"])
        print(json.dumps(ms), flush=True)
        return 0
    pretrain = yaml.safe_load(args.params.read_text())["pretrain"]
    section = {key: pretrain[key] for key in ("model", "image_size", "batch_size")}
    started, t0 = datetime.now(timezone.utc), time.perf_counter()
    results = {name: {"alone": [], "pair": []} for name in FORMULATIONS}
    for round_ in range(args.rounds):
        for name in FORMULATIONS:
            for mode, processes in (("alone", 1), ("pair", 2)):
                results[name][mode].append(measure(section, name, processes))
                fastest, median = results[name][mode][-1]
                print(f"round {round_ + 1} {name:55s} {mode:5s} {fastest:4.0f} ms fastest, {median:4.0f} median")
    write_section(args.out, "default_step", render(section, results, args.rounds, started, time.perf_counter() - t0))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
