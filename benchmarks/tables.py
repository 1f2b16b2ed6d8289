"""Tables 1 and 2 measured, with progress lines: each model's counts and timings, SDPA vs explicit-attention probes."""

from __future__ import annotations

import os
import statistics
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from measure import busy_warning, count_macs, count_params, time_calls
from model_zoo import (
    ATTENTION_MODEL,
    BASELINE_NAME,
    EXPECTED_GMACS,
    GMACS_TOLERANCE,
    IMAGE_SIZE,
    build_model,
    make_input,
)
from probe import ProbeResult, ProbeSpec, launch_probe


@dataclass
class ModelResult:
    name: str
    params: int
    macs: int
    explicit_macs: int | None  # the explicit-attention path's count, None for models without attention
    latency_s: list[float]  # batch 1
    latency_cores: float
    batch: int
    batch_s: list[float]  # time per batch at `batch`
    batch_cores: float

    @property
    def throughput(self) -> float:
        return self.batch / statistics.median(self.batch_s)


def _macs_check(name: str, macs: int, explicit_macs: int | None) -> str:
    """The GMACs count against EXPECTED_GMACS, and the explicit-attention count, for the progress line."""
    check = ""
    if name in EXPECTED_GMACS:
        ok = abs(macs / 1e9 - EXPECTED_GMACS[name]) <= GMACS_TOLERANCE * EXPECTED_GMACS[name]
        check = f" (expected ~{EXPECTED_GMACS[name]:.2f}: {'ok' if ok else 'MISMATCH'})"
    if explicit_macs is not None:
        check += f", explicit-attention count {explicit_macs / 1e9:.3f}"
    return check


def measure_model(name: str, batch: int, latency_runs: tuple[int, int], batch_runs: tuple[int, int]) -> ModelResult:
    """Table 1 row: parameters, MACs, batch-1 latency and batch-`batch` times; runs are (warm-up, timed)."""
    model = build_model(name)
    params = count_params(model)
    macs = count_macs(model, IMAGE_SIZE)
    is_transpose = name != BASELINE_NAME
    explicit_macs = count_macs(model, IMAGE_SIZE, explicit_attention=True) if is_transpose else None
    print(f"  params {params / 1e6:.3f} M, {macs / 1e9:.3f} GMACs{_macs_check(name, macs, explicit_macs)}", flush=True)

    with torch.inference_mode():
        x1 = make_input(1, IMAGE_SIZE)
        out = model(x1)
        expected_shape = (1, 17, IMAGE_SIZE[0] // 4, IMAGE_SIZE[1] // 4)
        if tuple(out.shape) != expected_shape:
            raise RuntimeError(f"{name}: output {tuple(out.shape)}, expected {expected_shape}")
        latency, latency_cores = time_calls(lambda: model(x1), *latency_runs)
        print(
            f"  latency b=1: median {statistics.median(latency) * 1e3:.1f} ms over {len(latency)} runs, "
            f"{latency_cores:.2f} cores busy{busy_warning(latency_cores)}",
            flush=True,
        )
        xb = make_input(batch, IMAGE_SIZE)
        batch_s, batch_cores = time_calls(lambda: model(xb), *batch_runs)
    result = ModelResult(name, params, macs, explicit_macs, latency, latency_cores, batch, batch_s, batch_cores)
    print(
        f"  throughput b={batch}: {result.throughput:.2f} samples/s "
        f"(median of {len(batch_s)} runs, {statistics.median(batch_s):.2f} s/batch), "
        f"{batch_cores:.2f} cores busy{busy_warning(batch_cores)}",
        flush=True,
    )
    return result


@dataclass
class AttentionRow:
    image_size: tuple[int, int]
    tokens: int
    batch: int
    sdpa: ProbeResult
    explicit: ProbeResult
    max_abs_diff: float
    max_abs_heatmap: float


def _probe_pair(
    image_size: tuple[int, int], batch: int, threads: int, warmup: int, repeats: int, tmp: str, script: Path
) -> AttentionRow:
    """One Table 2 row: the SDPA and the explicit-attention probe, and how far apart their heatmaps are."""
    results: dict[bool, ProbeResult] = {}
    paths: dict[bool, str] = {}
    for explicit in (False, True):
        paths[explicit] = os.path.join(tmp, f"{image_size[0]}x{image_size[1]}_{explicit}.pt")
        spec = ProbeSpec(ATTENTION_MODEL, image_size, batch, explicit, threads, warmup, repeats, paths[explicit])
        results[explicit] = res = launch_probe(spec, script)
        print(
            f"  {image_size[0]}x{image_size[1]} b={batch} {'explicit' if explicit else 'SDPA':8s}: "
            f"{statistics.median(res.batch_s):.3f} s/batch ({res.cores:.2f} cores busy"
            f"{busy_warning(res.cores)}), peak +{res.peak_delta_mib:.0f} MiB ({res.peak_source})",
            flush=True,
        )
    sdpa_maps, explicit_maps = torch.load(paths[False]), torch.load(paths[True])
    diff = (sdpa_maps - explicit_maps).abs().max().item()
    scale = sdpa_maps.abs().max().item()
    sdpa, expl = results[False], results[True]
    print(f"  max |heatmap(SDPA) - heatmap(explicit)| = {diff:.3e} (max |heatmap| {scale:.3e})", flush=True)
    return AttentionRow(image_size, sdpa.tokens, batch, sdpa, expl, diff, scale)


def measure_attention(
    configs: Sequence[tuple[tuple[int, int], int]], threads: int, warmup: int, repeats: int, script: Path
) -> list[AttentionRow]:
    """Table 2 rows for (image size, batch) configurations; `script` is the entry point with the --probe mode."""
    with tempfile.TemporaryDirectory() as tmp:
        return [_probe_pair(size, batch, threads, warmup, repeats, tmp, script) for size, batch in configs]
