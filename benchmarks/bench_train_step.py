"""Training step and eval forward on CPU: the project's attention (no L x L matrix kept) against the explicit
formulation (the reference's nn.MultiheadAttention: softmax stored, dropout on it, @ v), in one run.

Command (writes the `train_step` section of docs/benchmarks.md; about 30 minutes on 2 cores):

    .venv/bin/python benchmarks/bench_train_step.py

Smoke test (batch 2, one timed step, writes nothing unless --out is given):

    .venv/bin/python benchmarks/bench_train_step.py --quick --out /tmp/train_step.md

A train step is forward + 0.5 * MSE against a fixed target + backward + Adam (lr 1e-4), in train mode with the
models' dropout 0.1 (attention dropout included), fp32, seed-0 weights. `fused` is the model as it trains here
(`transpose.models.blocked_attention` on CPU); `explicit` is `set_attention(model, "explicit")`. Eval rows time
`model(x)` under torch.inference_mode() (fused: F.scaled_dot_product_attention). Each cell is a fresh
subprocess: its peak memory is the kernel's RSS high-water mark during the first step minus the RSS after
building model, optimizer and batch (see probe.py). Each row runs --rounds cells of each kind, alternating
(fused, explicit, explicit, fused): its samples/s are those of the fastest timed step, its peak the highest.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

import torch

from transpose.models import set_attention, set_dropout_masks

from measure import busy_warning, matmul_gflops, time_calls
from model_zoo import build_model, make_input
from probe import reset_peak_rss, status_kib
from report import DEFAULT_REPORT, REPO_ROOT, command_line, cpu_description, write_section

SECTION = "train_step"
RESULT_PREFIX = "TRAIN_STEP_RESULT "
KINDS = ("fused", "explicit")


@dataclass(frozen=True)
class Config:
    """One row: a model at an input size and batch, trained ("train") or evaluated ("eval")."""

    model: str
    image_size: tuple[int, int]
    batch: int
    mode: str


FULL_CONFIGS = (
    Config("transpose_r_a4", (256, 192), 8, "train"),
    Config("transpose_h_s", (256, 192), 8, "train"),
    Config("transpose_h_a4", (256, 192), 8, "train"),
    Config("transpose_h_a4", (384, 288), 4, "train"),
    Config("transpose_r_a4", (256, 192), 8, "eval"),
    Config("transpose_h_a4", (256, 192), 8, "eval"),
)
QUICK_CONFIGS = tuple(Config(c.model, c.image_size, 2, c.mode) for c in FULL_CONFIGS[:1] + FULL_CONFIGS[4:5])
GIB = 1024**3


@dataclass
class Cell:
    """One subprocess's measurement."""

    batch: int
    peak_mib: float
    step_s: list[float]
    cores: float
    loss: float  # the first step's (train) or the max |heatmap| (eval), a sanity figure

    @property
    def samples_per_s(self) -> float:
        """At the fastest timed step: on the shared hosts measured, the cores' speed drifts by tens of percent
        from minute to minute, and the fastest step moves least."""
        return self.batch / min(self.step_s)

    @classmethod
    def merged(cls, cells: Sequence[Cell]) -> Cell:
        """One cell of several rounds: all their timed steps, the highest peak, the mean cores busy."""
        return cls(
            batch=cells[0].batch,
            peak_mib=max(c.peak_mib for c in cells),
            step_s=[t for c in cells for t in c.step_s],
            cores=statistics.mean(c.cores for c in cells),
            loss=cells[0].loss,
        )


def _no_scope(name: str) -> AbstractContextManager:
    return nullcontext()


def make_step(
    config: Config, kind: str, channels_last: bool = False, dropout_masks: str = "numpy",
    scope: Callable[[str], AbstractContextManager] = _no_scope,
) -> Callable[[], float]:  # fmt: skip
    """Build the model (attention `kind`, NHWC convolutions with `channels_last`, `dropout_masks` as
    `set_dropout_masks`), its batch and, to train, Adam and a fixed target; returns one step, which returns the
    loss (train) or the max |heatmap| (eval). `scope(phase)` wraps its forward, backward and optimizer phases
    (a profiler's record_function, say)."""
    model = set_dropout_masks(set_attention(build_model(config.model, config.image_size), kind), dropout_masks)
    x = make_input(config.batch, config.image_size)
    if channels_last:
        model, x = model.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
    if config.mode != "train":

        def evaluate() -> float:
            with torch.inference_mode(), scope("forward"):
                return model(x).abs().max().item()

        return evaluate
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    with torch.no_grad():
        target = torch.zeros_like(model.eval()(x[:1])).expand(config.batch, -1, -1, -1).contiguous()
    model.train()

    def train() -> float:
        with scope("optimizer"):
            optimizer.zero_grad(set_to_none=True)
        with scope("forward"):
            loss = 0.5 * torch.nn.functional.mse_loss(model(x), target)
        with scope("backward"):
            loss.backward()
        with scope("optimizer"):
            optimizer.step()
        return loss.item()

    return train


def measure_cell(
    config: Config, kind: str, threads: int, warmup: int, repeats: int,
    channels_last: bool = False, dropout_masks: str = "numpy",
) -> Cell:  # fmt: skip
    """Inside the subprocess: build, measure the first step's peak RSS, then time the steps (see make_step)."""
    torch.set_num_threads(threads)
    step = make_step(config, kind, channels_last, dropout_masks)
    gc.collect()
    reset_peak_rss()
    baseline = status_kib("VmRSS") or 0
    loss = step()
    peak = status_kib("VmHWM") or 0
    step_s, cores = time_calls(step, warmup, repeats)
    return Cell(config.batch, (peak - baseline) / 1024, step_s, cores, loss)


def launch_cell(config: Config, kind: str, threads: int, warmup: int, repeats: int) -> Cell:
    """Run this script's --probe mode for one cell in a fresh interpreter."""
    spec = json.dumps({"config": asdict(config), "kind": kind, "threads": threads, "warmup": warmup,
                       "repeats": repeats})  # fmt: skip
    proc = subprocess.run([sys.executable, __file__, "--probe", spec], capture_output=True, text=True, cwd=REPO_ROOT)
    lines = [line for line in proc.stdout.splitlines() if line.startswith(RESULT_PREFIX)]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"{config} {kind} failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
    return Cell(**json.loads(lines[-1][len(RESULT_PREFIX) :]))


def probe_reply(spec_json: str) -> str:
    spec = json.loads(spec_json)
    config = spec.pop("config")
    cell = measure_cell(Config(config["model"], tuple(config["image_size"]), config["batch"], config["mode"]), **spec)
    return RESULT_PREFIX + json.dumps(asdict(cell))


def _label(config: Config) -> str:
    return f"{config.model} {config.image_size[0]}x{config.image_size[1]} b={config.batch} {config.mode}"


def measure(configs: Sequence[Config], threads: int, warmup: int, repeats: int, rounds: int) -> list[dict[str, Cell]]:
    """Per config, `rounds` cells of each kind, in the order fused, explicit, explicit, fused, ... so that a
    host whose speed drifts during a row slows both kinds alike; each kind's cells merged (Cell.merged)."""
    rows = []
    for config in configs:
        cells: dict[str, list[Cell]] = {kind: [] for kind in KINDS}
        for round_ in range(rounds):
            for kind in KINDS if round_ % 2 == 0 else KINDS[::-1]:
                cells[kind].append(cell := launch_cell(config, kind, threads, warmup, repeats))
                print(
                    f"{_label(config):45s} {kind:8s}: {cell.samples_per_s:6.3g} samples/s at the fastest step, "
                    f"peak +{cell.peak_mib:.0f} MiB, {cell.cores:.2f} cores busy{busy_warning(cell.cores)}",
                    flush=True,
                )
        rows.append({kind: Cell.merged(kind_cells) for kind, kind_cells in cells.items()})
    return rows


def verdicts(configs: Sequence[Config], rows: Sequence[dict[str, Cell]]) -> list[str]:
    """The issue's targets, PASS or FAIL with the figures."""
    found = {(c.model, c.image_size, c.mode): r for c, r in zip(configs, rows, strict=True)}
    lines = []

    def speed(key, target: float, what: str) -> None:
        if key in found:
            r = found[key]
            ratio = r["fused"].samples_per_s / r["explicit"].samples_per_s
            verdict = "PASS" if ratio >= target else "FAIL"
            lines.append(f"{verdict} {what}: {ratio:.2f}x the explicit formulation (target >= {target}x)")

    for model in ("transpose_r_a4", "transpose_h_s", "transpose_h_a4"):
        speed((model, (256, 192), "train"), 1.5, f"{model} 256x192 train step")
    for model in ("transpose_r_a4", "transpose_h_a4"):
        speed((model, (256, 192), "eval"), 2.0, f"{model} 256x192 eval")
    if (key := ("transpose_h_s", (256, 192), "train")) in found:
        r = found[key]
        share = r["fused"].peak_mib / r["explicit"].peak_mib
        verdict = "PASS" if share <= 0.5 else "FAIL"
        lines.append(f"{verdict} transpose_h_s train step peak memory: {share:.2f}x the explicit one (target <= 0.5x)")
    if (key := ("transpose_h_a4", (384, 288), "train")) in found:
        peak = found[key]["fused"].peak_mib * 1024**2
        verdict = "PASS" if peak <= 8 * GIB else "FAIL"
        lines.append(f"{verdict} transpose_h_a4 384x288 batch 4 training: peak +{peak / GIB:.2f} GiB (target <= 8 GiB)")
    return lines


def render(configs, rows, lines, threads, started, elapsed_s, gemm, runs, rounds, quick) -> str:
    out = [
        "## Training step: the project's attention vs the explicit formulation (CPU)",
        "",
        f"- Command: `{command_line()}`",
        f"- Date: {started:%Y-%m-%d %H:%M} UTC, {elapsed_s / 60:.1f} min" + (" (--quick: smoke test)" if quick else ""),
        f"- torch {torch.__version__}, `torch.set_num_threads({threads})`; CPU: {cpu_description()}",
        f"- fp32 1024x1024 GEMM: {gemm[0]:.0f} GFLOP/s before, {gemm[1]:.0f} after (a gap means a busy host)",
        f"- train step: forward + 0.5 * MSE + backward + Adam, dropout 0.1; eval: forward under inference_mode; "
        f"samples/s at the fastest of {runs[1]} timed steps (after {runs[0]} warm-up) in each of {rounds} cells "
        "per kind (fresh processes, in the order fused, explicit, explicit, fused, ...: this host's speed drifts "
        "by tens of percent within minutes, and the fastest step moves least); peak = the RSS high-water mark of "
        "the first step minus the RSS before it, the highest of the cells",
        "",
        "| model | input | batch | mode | fused samples/s | explicit samples/s | speed-up | fused peak (MiB) "
        "| explicit peak (MiB) | memory | cores busy (fused / explicit) |",
        "|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for c, r in zip(configs, rows, strict=True):
        f, e = r["fused"], r["explicit"]
        out.append(
            f"| {c.model} | {c.image_size[0]}x{c.image_size[1]} | {c.batch} | {c.mode} | {f.samples_per_s:.3g} "
            f"| {e.samples_per_s:.3g} | {f.samples_per_s / e.samples_per_s:.2f}x | {f.peak_mib:.0f} | {e.peak_mib:.0f} "
            f"| {f.peak_mib / max(e.peak_mib, 1e-9):.2f}x | {f.cores:.2f} / {e.cores:.2f} |"
        )
    out += ["", "Targets:", "", "```", *lines, "```"]
    return "\n".join(out)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="smoke test: batch 2, one timed step, no report")
    parser.add_argument("--rounds", type=int, default=2, help="cells per kind and row (default 2; --quick: 1)")
    parser.add_argument("--out", type=Path, default=None, help=f"markdown file (default {DEFAULT_REPORT})")
    parser.add_argument("--probe", help=argparse.SUPPRESS)  # internal: one cell, as JSON
    args = parser.parse_args(argv)
    if args.probe:
        print(probe_reply(args.probe), flush=True)
        return 0
    configs, runs = (QUICK_CONFIGS, (0, 1)) if args.quick else (FULL_CONFIGS, (1, 3))
    rounds = 1 if args.quick else args.rounds
    started, t0 = datetime.now(timezone.utc), time.perf_counter()
    torch.set_num_threads(args.threads)
    gemm_before = matmul_gflops()
    rows = measure(configs, args.threads, *runs, rounds)
    gemm = (gemm_before, matmul_gflops())
    lines = verdicts(configs, rows)
    print("\n".join(lines), flush=True)
    body = render(configs, rows, lines, args.threads, started, time.perf_counter() - t0, gemm, runs, rounds, args.quick)
    out = args.out if args.out is not None else (None if args.quick else DEFAULT_REPORT)
    if out is not None:
        write_section(out, SECTION, body)
        print(f"wrote {out}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
