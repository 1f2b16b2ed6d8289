"""The markdown of the `models` section: run description, Table 1, Table 2 and the target verdicts."""

from __future__ import annotations

import platform
import statistics
from collections.abc import Sequence
from datetime import datetime

import torch

from measure import busy_warning
from model_zoo import ATTENTION_MODEL, EXPECTED_GMACS, REFERENCE_THROUGHPUT, TARGETS
from report import command_line, cpu_description
from tables import AttentionRow, ModelResult


def _spread(values: Sequence[float], scale: float = 1.0, fmt: str = ".1f") -> str:
    """Median and (min–max) of values times scale."""
    med, lo, hi = statistics.median(values) * scale, min(values) * scale, max(values) * scale
    return f"{med:{fmt}} ({lo:{fmt}}–{hi:{fmt}})"


def target_lines(results: Sequence[ModelResult], threads: int, quick: bool) -> list[str]:
    """PASS/FAIL of each TARGETS model's throughput, and a note when the run is not the targets' setting."""
    lines = []
    by_name = {r.name: r for r in results}
    for name, target in TARGETS.items():
        r = by_name[name]
        verdict = "PASS" if r.throughput >= target else "FAIL"
        lines.append(
            f"{verdict} {name}: {r.throughput:.2f} samples/s at batch {r.batch}, {threads} threads "
            f"(target >= {target}; authors' implementation {REFERENCE_THROUGHPUT[name]})"
            + (f" [host busy: {r.batch_cores:.2f} cores]" if busy_warning(r.batch_cores) else "")
        )
    if quick or threads != 2:
        lines.append("note: targets are defined at batch 32 with 2 threads; this run is not comparable")
    return lines


def _run_lines(threads: int, quick: bool, started: datetime, elapsed_s: float, gemm: tuple[float, float]) -> list[str]:
    return [
        "## Model library on CPU" + (" (quick smoke run, not representative)" if quick else ""),
        "",
        f"- Command: `{command_line()}` (from the repository root)",
        f"- Date: {started.strftime('%Y-%m-%d %H:%M %Z')}, {elapsed_s / 60:.1f} min",
        f"- torch {torch.__version__}, Python {platform.python_version()}, "
        f"`torch.set_num_threads({threads})` (torch.get_num_threads() = {torch.get_num_threads()})",
        f"- CPU: {cpu_description()}",
        f"- fp32 1024x1024 GEMM: {gemm[0]:.0f} GFLOP/s before, {gemm[1]:.0f} after "
        "(a large gap, or a low figure, means the host was busy and the timings below are pessimistic)",
        "- eval mode, `torch.inference_mode()`, fp32, seed-0 random weights, contiguous NCHW input",
    ]


def _table1_lines(
    results: Sequence[ModelResult], threads: int, latency_runs: tuple[int, int], batch_runs: tuple[int, int]
) -> list[str]:
    batch = results[0].batch
    out = [
        "### Table 1: models at 256x192",
        "",
        f"Latency: batch 1, {latency_runs[1]} timed runs after {latency_runs[0]} warm-up. "
        f"Throughput: batch {batch}, {batch_runs[1]} timed runs after {batch_runs[0]} warm-up. "
        "Cells give the median and, in brackets, the range over the timed runs. "
        "GMACs: multiply-adds per sample, `FlopCounterMode` FLOPs / 2, SDPA included. "
        f"Cores busy: process CPU time / wall time over the timed runs (latency / throughput); about {threads} "
        "on a quiet machine, towards 1 when another process competes for the cores (timings then inflate "
        "several-fold).",
        "",
        f"| Model | Params (M) | GMACs | Latency b=1 (ms) | Throughput b={batch} (samples/s) | Cores busy |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        per_sample = [r.batch / t for t in r.batch_s]
        out.append(
            f"| {r.name} | {r.params / 1e6:.2f} | {r.macs / 1e9:.2f} | {_spread(r.latency_s, 1e3)} "
            f"| {_spread(per_sample, fmt='.2f')} | {r.latency_cores:.2f} / {r.batch_cores:.2f} |"
        )
    checks = [f"{name} {EXPECTED_GMACS[name]:.2f}" for name in EXPECTED_GMACS]
    out += [
        "",
        f"Expected GMACs: {', '.join(checks)}. Each TransPose count equals the count of its explicit-attention "
        "forward, whose QK^T and AV matmuls the counter sees; without a formula for "
        "`aten._scaled_dot_product_flash_attention_for_cpu` FlopCounterMode misses them "
        "(R-A4 would read 5.11 GMACs, H-A4 9.96).",
    ]
    return out


def _table2_lines(rows: Sequence[AttentionRow], attention_runs: tuple[int, int]) -> list[str]:
    out = [
        f"### Table 2: {ATTENTION_MODEL}, SDPA forward vs explicit-attention forward",
        "",
        "Explicit = `model(x, return_attention=True)`: per-layer softmax matrices materialised and head-averaged "
        "maps returned. Each cell is a fresh subprocess; peak memory is the peak RSS during its first forward "
        "minus the RSS after building model and input (kernel high-water mark, see the script's docstring). "
        f"Time per batch: median (range) of {attention_runs[1]} runs after {attention_runs[0]} warm-up "
        "(the first, measured forward is not timed).",
        "",
        "| Input | Tokens | Batch | SDPA s/batch | Explicit s/batch | Cores busy (SDPA / explicit) "
        "| SDPA peak (MiB) | Explicit peak (MiB) | max abs diff of heatmaps |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        h, w = row.image_size
        out.append(
            f"| {h}x{w} | {row.tokens} | {row.batch} | {_spread(row.sdpa.batch_s, fmt='.3f')} "
            f"| {_spread(row.explicit.batch_s, fmt='.3f')} | {row.sdpa.cores:.2f} / {row.explicit.cores:.2f} "
            f"| {row.sdpa.peak_delta_mib:.0f} "
            f"| {row.explicit.peak_delta_mib:.0f} "
            f"| {row.max_abs_diff:.2e} (max abs heatmap {row.max_abs_heatmap:.2e}) |"
        )
    return out


def _targets_lines(results: Sequence[ModelResult], threads: int, quick: bool) -> list[str]:
    return [
        "### Targets",
        "",
        "Eval throughput at batch 32 with 2 threads: transpose_r_a4 >= 6 samples/s, transpose_h_a4 >= 2.2. "
        f"Reference: the authors' implementation on this kind of machine gives {REFERENCE_THROUGHPUT['transpose_r_a4']}"
        f" and {REFERENCE_THROUGHPUT['transpose_h_a4']} samples/s.",
        "",
        "```",
        *target_lines(results, threads, quick),
        "```",
    ]


def render(
    results: Sequence[ModelResult],
    rows: Sequence[AttentionRow],
    *,
    threads: int,
    quick: bool,
    started: datetime,
    elapsed_s: float,
    gemm: tuple[float, float],
    latency_runs: tuple[int, int],
    batch_runs: tuple[int, int],
    attention_runs: tuple[int, int],
) -> str:
    """The section's lines between its markers (report.write_section adds them), without a final newline."""
    parts = [
        _run_lines(threads, quick, started, elapsed_s, gemm),
        _table1_lines(results, threads, latency_runs, batch_runs),
        _table2_lines(rows, attention_runs),
        _targets_lines(results, threads, quick),
    ]
    return "\n\n".join("\n".join(part) for part in parts)
