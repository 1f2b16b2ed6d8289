"""CPU benchmark of the TransPose model library, written as a markdown section of docs/benchmarks.md.

Command (the full run: about five minutes on an idle 2-core machine; run it when nothing else is using the
cores, since one competing process can slow a 2-thread forward several-fold; see the "cores busy" column):

    .venv/bin/python benchmarks/bench_models.py

Smoke test (batch 4, fewer repeats, writes nothing unless --out is given):

    .venv/bin/python benchmarks/bench_models.py --quick --out /tmp/bench_quick.md

Everything runs in eval mode under torch.inference_mode() with torch.set_num_threads(--threads), fp32,
randomly initialised weights (seed 0; timing does not depend on the weights' values).

Table 1: the paper's five TransPose models and a SimpleBaseline-Res50 defined here (no torchvision):
parameters, multiply-adds per 256x192 sample (FlopCounterMode FLOPs / 2), batch-1 latency and batch-32
throughput. The stock FlopCounterMode has no formula for the CPU kernel behind
F.scaled_dot_product_attention (aten._scaled_dot_product_flash_attention_for_cpu) and would silently drop
the QK^T and AV products, so one is supplied; the count is cross-checked against the explicit-attention path,
whose matmuls the counter does see.

Table 2: transpose_h_a4's SDPA forward against its explicit-attention forward (return_attention=True,
softmax matrices materialised) at 256x192 and 384x288. Each configuration runs in a fresh subprocess which
reports the peak resident set size during its first forward minus the RSS after building model and input.
The peak is the kernel's per-process high-water mark (VmHWM), the figure ru_maxrss is made from: ru_maxrss
itself is unusable in a child, because Linux carries the parent's peak over at exec (a child of a 2 GB
parent reports ru_maxrss >= 2 GB whatever it does; checked on Linux 6.18), so the probe reads VmHWM after
resetting it through /proc/self/clear_refs, and falls back to ru_maxrss elsewhere.

Where the code lives (all in benchmarks/, imported as top-level modules because Python puts the folder of a
script run by path first on sys.path; the --probe subprocess re-runs this file by path, so it imports them too):

    bench_models.py     this entry point: arguments, the run plan (--quick or full), the order of the steps
    model_zoo.py        the benchmarked models, expected GMACs, throughput targets, seeded builds and inputs
    simple_baseline.py  the SimpleBaseline-Res50
    measure.py          count_params, count_macs (with the SDPA formula), time_calls, matmul_gflops
    probe.py            the Table 2 subprocess probe (peak RSS via VmHWM) and the --probe mode
    tables.py           the Table 1 and Table 2 measurements, with the progress lines
    render.py           the markdown of the `models` section
    report.py           write_section (shared with bench_loaders.py and bench_training.py), CPU and command lines
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import torch

from measure import matmul_gflops
from model_zoo import ATTENTION_MODEL, BASELINE_NAME, IMAGE_SIZE, PAPER_MODELS
from probe import probe_reply
from render import render, target_lines
from report import DEFAULT_REPORT, cpu_description, write_section
from tables import measure_attention, measure_model

SECTION = "models"


@dataclass(frozen=True)
class RunPlan:
    """Batch size, (warm-up, timed) run counts and Table 2's (image size, batch) configurations."""

    batch: int
    latency_runs: tuple[int, int]
    batch_runs: tuple[int, int]
    attention_runs: tuple[int, int]
    attention_configs: tuple[tuple[tuple[int, int], int], ...]


FULL_PLAN = RunPlan(32, (3, 15), (1, 5), (1, 3), (((256, 192), 8), ((384, 288), 2)))
QUICK_PLAN = RunPlan(4, (1, 3), (1, 2), (0, 1), (((256, 192), 2), ((384, 288), 1)))


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    parser.add_argument("--quick", action="store_true", help="smoke test: batch 4, few repeats, no report by default")
    parser.add_argument("--out", type=Path, default=None, help=f"markdown file (default {DEFAULT_REPORT})")
    parser.add_argument("--probe", help=argparse.SUPPRESS)  # internal: one Table 2 configuration, as JSON
    return parser.parse_args(argv)


def run(plan: RunPlan, threads: int, quick: bool) -> tuple[str, float]:
    """Measure both tables, print progress and the target verdicts; returns the section's markdown and seconds."""
    started = datetime.now().astimezone()
    t0 = time.perf_counter()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU: {cpu_description()}", flush=True)
    gemm_before = matmul_gflops()
    print(f"fp32 GEMM: {gemm_before:.0f} GFLOP/s", flush=True)

    print(f"Table 1: models at {IMAGE_SIZE[0]}x{IMAGE_SIZE[1]}", flush=True)
    results = []
    for name in (*PAPER_MODELS, BASELINE_NAME):
        print(f"{name}", flush=True)
        results.append(measure_model(name, plan.batch, plan.latency_runs, plan.batch_runs))
        gc.collect()

    print(f"Table 2: {ATTENTION_MODEL}, SDPA vs explicit attention (one subprocess each)", flush=True)
    script = Path(__file__).resolve()
    rows = measure_attention(plan.attention_configs, threads, *plan.attention_runs, script=script)

    gemm_after = matmul_gflops()
    print(f"fp32 GEMM: {gemm_after:.0f} GFLOP/s", flush=True)
    print("Targets:", flush=True)
    for line in target_lines(results, threads, quick):
        print(f"  {line}", flush=True)

    elapsed = time.perf_counter() - t0
    body = render(
        results,
        rows,
        threads=threads,
        quick=quick,
        started=started,
        elapsed_s=elapsed,
        gemm=(gemm_before, gemm_after),
        latency_runs=plan.latency_runs,
        batch_runs=plan.batch_runs,
        attention_runs=plan.attention_runs,
    )
    return body, elapsed


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.probe:
        print(probe_reply(args.probe), flush=True)
        return 0

    torch.set_num_threads(args.threads)
    out_path: Path | None = args.out if args.out is not None else (None if args.quick else DEFAULT_REPORT)
    body, elapsed = run(QUICK_PLAN if args.quick else FULL_PLAN, args.threads, args.quick)
    if out_path is not None:
        write_section(out_path, SECTION, body)
        print(f"wrote {out_path}", flush=True)
    else:
        print("--quick without --out: no report written", flush=True)
    print(f"done in {elapsed / 60:.1f} min", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
