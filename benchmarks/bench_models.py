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
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import resource
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from transpose.models import create_model

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO_ROOT / "docs" / "benchmarks.md"
START_MARKER = "<!-- models:start -->"
END_MARKER = "<!-- models:end -->"
PROBE_PREFIX = "PROBE_RESULT "

PAPER_MODELS = ("transpose_r_a3", "transpose_r_a4", "transpose_h_s", "transpose_h_a4", "transpose_h_a6")
BASELINE_NAME = "simplebaseline_res50"
IMAGE_SIZE = (256, 192)
ATTENTION_MODEL = "transpose_h_a4"
EXPECTED_GMACS = {"transpose_r_a4": 6.32, "transpose_h_a4": 17.21}  # paper-consistent counts at 256x192
GMACS_TOLERANCE = 0.005  # relative
# Throughput targets (samples/s, batch 32, 2 threads) and the authors' implementation on this kind of machine.
TARGETS = {"transpose_r_a4": 6.0, "transpose_h_a4": 2.2}
REFERENCE_THROUGHPUT = {"transpose_r_a4": 3.09, "transpose_h_a4": 1.39}


# --------------------------------------------------------------------------------------------------------------
# SimpleBaseline-Res50 (Xiao et al., ECCV 2018), written out here so the benchmark needs no torchvision.
# --------------------------------------------------------------------------------------------------------------


class _Bottleneck(nn.Module):
    """ResNet v1.5 Bottleneck (stride on the 3x3 conv), as in torchvision and the SimpleBaseline code."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1):
        super().__init__()
        out = planes * self.expansion
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out)
        self.relu = nn.ReLU(inplace=True)
        self.downsample: nn.Module | None = None
        if stride != 1 or inplanes != out:
            self.downsample = nn.Sequential(nn.Conv2d(inplanes, out, 1, stride=stride, bias=False), nn.BatchNorm2d(out))

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.relu(self.bn2(self.conv2(y)))
        return self.relu(self.bn3(self.conv3(y)) + identity)


class SimpleBaselineRes50(nn.Module):
    """ResNet-50 without avgpool/fc, three 4x4/2 deconvs (256 ch, BN, ReLU), 1x1 conv: 256x192 -> 64x48."""

    def __init__(self, num_keypoints: int = 17, deconv_channels: int = 256):
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False),
            nn.BatchNorm2d(64),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(3, stride=2, padding=1),
        )
        stages: list[nn.Module] = []
        inplanes = 64
        for planes, blocks, stride in ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)):
            layers = [_Bottleneck(inplanes, planes, stride)]
            inplanes = planes * _Bottleneck.expansion
            layers += [_Bottleneck(inplanes, planes) for _ in range(blocks - 1)]
            stages.append(nn.Sequential(*layers))
        self.stages = nn.Sequential(*stages)
        deconvs: list[nn.Module] = []
        for _ in range(3):
            deconvs += [
                nn.ConvTranspose2d(inplanes, deconv_channels, 4, stride=2, padding=1, bias=False),
                nn.BatchNorm2d(deconv_channels),
                nn.ReLU(inplace=True),
            ]
            inplanes = deconv_channels
        self.deconv_layers = nn.Sequential(*deconvs)
        self.final_layer = nn.Conv2d(deconv_channels, num_keypoints, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.final_layer(self.deconv_layers(self.stages(self.stem(x))))


def build_model(name: str, image_size: tuple[int, int] = IMAGE_SIZE) -> nn.Module:
    """A model in eval mode with seed-0 weights: a registered TransPose variant or the SimpleBaseline."""
    torch.manual_seed(0)
    model = SimpleBaselineRes50() if name == BASELINE_NAME else create_model(name, image_size=image_size)
    return model.eval()


def make_input(batch: int, image_size: tuple[int, int]) -> Tensor:
    generator = torch.Generator().manual_seed(1)
    return torch.randn(batch, 3, *image_size, generator=generator)


# --------------------------------------------------------------------------------------------------------------
# Measurements
# --------------------------------------------------------------------------------------------------------------


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _sdpa_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    """FLOPs of softmax(QK^T)V for [B, h, L, d] inputs: two batched matmuls (the softmax is not counted)."""
    b, h, s_q, d_q = query_shape
    s_k, d_v = key_shape[-2], value_shape[-1]
    return 2 * b * h * s_q * s_k * d_q + 2 * b * h * s_q * s_k * d_v


def _flop_mapping() -> dict:
    """Formulas for SDPA kernels the installed torch's FlopCounterMode does not know (the CPU one)."""
    mapping = {}
    registry = getattr(torch.utils.flop_counter, "flop_registry", {})
    for op_name in ("_scaled_dot_product_flash_attention_for_cpu",):
        op = getattr(torch.ops.aten, op_name, None)
        if op is not None and op not in registry:
            mapping[op] = _sdpa_flops
    return mapping


def count_macs(model: nn.Module, image_size: tuple[int, int], explicit_attention: bool = False) -> int:
    """Multiply-adds of one sample (FlopCounterMode FLOPs / 2)."""
    x = make_input(1, image_size)
    with torch.inference_mode(), FlopCounterMode(display=False, custom_mapping=_flop_mapping()) as counter:
        if explicit_attention:
            model(x, return_attention=True)
        else:
            model(x)
    return counter.get_total_flops() // 2


def time_calls(fn: Callable[[], object], warmup: int, repeats: int) -> tuple[list[float], float]:
    """Wall-clock seconds of `repeats` calls of fn after `warmup` untimed ones, and the cores busy meanwhile.

    Cores = process CPU time / wall time over the timed calls: about --threads on a quiet machine. When another
    process takes a core, OpenMP's lock-step threads wait for the descheduled one and a forward can run several
    times slower while this figure drops towards 1; such timings say more about the host than the model.
    """
    for _ in range(warmup):
        fn()
    times = []
    cpu_start = time.process_time()
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    cores = (time.process_time() - cpu_start) / max(sum(times), 1e-9)
    return times, cores


def matmul_gflops(seconds: float = 0.5, n: int = 1024) -> float:
    """fp32 GEMM rate, to tell a quiet machine from a contended one (shared hosts vary several-fold)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    calls, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        a @ b
        calls += 1
    return 2 * n**3 * calls / elapsed / 1e9


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


def measure_model(name: str, batch: int, latency_runs: tuple[int, int], batch_runs: tuple[int, int]) -> ModelResult:
    model = build_model(name)
    params = count_params(model)
    macs = count_macs(model, IMAGE_SIZE)
    is_transpose = name != BASELINE_NAME
    explicit_macs = count_macs(model, IMAGE_SIZE, explicit_attention=True) if is_transpose else None
    check = ""
    if name in EXPECTED_GMACS:
        ok = abs(macs / 1e9 - EXPECTED_GMACS[name]) <= GMACS_TOLERANCE * EXPECTED_GMACS[name]
        check = f" (expected ~{EXPECTED_GMACS[name]:.2f}: {'ok' if ok else 'MISMATCH'})"
    if explicit_macs is not None:
        check += f", explicit-attention count {explicit_macs / 1e9:.3f}"
    print(f"  params {params / 1e6:.3f} M, {macs / 1e9:.3f} GMACs{check}", flush=True)

    with torch.inference_mode():
        x1 = make_input(1, IMAGE_SIZE)
        out = model(x1)
        expected_shape = (1, 17, IMAGE_SIZE[0] // 4, IMAGE_SIZE[1] // 4)
        if tuple(out.shape) != expected_shape:
            raise RuntimeError(f"{name}: output {tuple(out.shape)}, expected {expected_shape}")
        latency, latency_cores = time_calls(lambda: model(x1), *latency_runs)
        print(
            f"  latency b=1: median {statistics.median(latency) * 1e3:.1f} ms over {len(latency)} runs, "
            f"{latency_cores:.2f} cores busy{_busy_warning(latency_cores)}",
            flush=True,
        )
        xb = make_input(batch, IMAGE_SIZE)
        batch_s, batch_cores = time_calls(lambda: model(xb), *batch_runs)
    result = ModelResult(name, params, macs, explicit_macs, latency, latency_cores, batch, batch_s, batch_cores)
    print(
        f"  throughput b={batch}: {result.throughput:.2f} samples/s "
        f"(median of {len(batch_s)} runs, {statistics.median(batch_s):.2f} s/batch), "
        f"{batch_cores:.2f} cores busy{_busy_warning(batch_cores)}",
        flush=True,
    )
    return result


def _busy_warning(cores: float) -> str:
    threads = torch.get_num_threads()
    return f" [WARNING: < {0.8 * threads:.1f} of {threads}: host busy?]" if cores < 0.8 * threads else ""


# --------------------------------------------------------------------------------------------------------------
# Attention paths, one fresh subprocess per configuration
# --------------------------------------------------------------------------------------------------------------


@dataclass
class ProbeSpec:
    model: str
    image_size: tuple[int, int]
    batch: int
    explicit: bool
    threads: int
    warmup: int
    repeats: int
    heatmaps_path: str


@dataclass
class ProbeResult:
    tokens: int
    baseline_rss_kib: int
    peak_rss_kib: int
    peak_source: str  # "VmHWM (reset)", "VmHWM" or "ru_maxrss"
    batch_s: list[float]
    cores: float

    @property
    def peak_delta_mib(self) -> float:
        return (self.peak_rss_kib - self.baseline_rss_kib) / 1024


def _status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def _reset_peak_rss() -> bool:
    """Reset the kernel's RSS high-water mark to the current RSS (Linux >= 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def run_probe(spec: ProbeSpec) -> ProbeResult:
    """Inside the subprocess: build, measure the first forward's peak RSS, then time a few more forwards."""
    torch.set_num_threads(spec.threads)
    model = build_model(spec.model, spec.image_size)
    x = make_input(spec.batch, spec.image_size)
    tokens = (spec.image_size[0] // model.stride) * (spec.image_size[1] // model.stride)
    gc.collect()
    was_reset = _reset_peak_rss()
    baseline = _status_kib("VmRSS")
    use_hwm = baseline is not None and _status_kib("VmHWM") is not None
    if baseline is None:
        baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    source = ("VmHWM (reset)" if was_reset else "VmHWM") if use_hwm else "ru_maxrss"

    def forward() -> Tensor:
        if spec.explicit:
            heatmaps, maps = model(x, return_attention=True)
            del maps
            return heatmaps
        return model(x)

    with torch.inference_mode():
        heatmaps = forward()
        peak = _status_kib("VmHWM") if use_hwm else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        torch.save(heatmaps, spec.heatmaps_path)
        del heatmaps
        batch_s, cores = time_calls(forward, spec.warmup, spec.repeats)
    return ProbeResult(tokens, baseline, int(peak or 0), source, batch_s, cores)


def launch_probe(spec: ProbeSpec) -> ProbeResult:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--probe", json.dumps(asdict(spec))]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO_ROOT)
    lines = [line for line in proc.stdout.splitlines() if line.startswith(PROBE_PREFIX)]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"probe {spec} failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
    return ProbeResult(**json.loads(lines[-1][len(PROBE_PREFIX) :]))


@dataclass
class AttentionRow:
    image_size: tuple[int, int]
    tokens: int
    batch: int
    sdpa: ProbeResult
    explicit: ProbeResult
    max_abs_diff: float
    max_abs_heatmap: float


def measure_attention(
    configs: Sequence[tuple[tuple[int, int], int]], threads: int, warmup: int, repeats: int
) -> list[AttentionRow]:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for image_size, batch in configs:
            results: dict[bool, ProbeResult] = {}
            paths: dict[bool, str] = {}
            for explicit in (False, True):
                paths[explicit] = os.path.join(tmp, f"{image_size[0]}x{image_size[1]}_{explicit}.pt")
                spec = ProbeSpec(
                    ATTENTION_MODEL, image_size, batch, explicit, threads, warmup, repeats, paths[explicit]
                )
                results[explicit] = res = launch_probe(spec)
                print(
                    f"  {image_size[0]}x{image_size[1]} b={batch} {'explicit' if explicit else 'SDPA':8s}: "
                    f"{statistics.median(res.batch_s):.3f} s/batch ({res.cores:.2f} cores busy"
                    f"{_busy_warning(res.cores)}), peak +{res.peak_delta_mib:.0f} MiB ({res.peak_source})",
                    flush=True,
                )
            sdpa_maps, explicit_maps = torch.load(paths[False]), torch.load(paths[True])
            diff = (sdpa_maps - explicit_maps).abs().max().item()
            scale = sdpa_maps.abs().max().item()
            sdpa, expl = results[False], results[True]
            rows.append(AttentionRow(image_size, sdpa.tokens, batch, sdpa, expl, diff, scale))
            print(f"  max |heatmap(SDPA) - heatmap(explicit)| = {diff:.3e} (max |heatmap| {scale:.3e})", flush=True)
    return rows


# --------------------------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------------------------


def cpu_description() -> str:
    model, count, avx512 = "unknown", 0, False
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "model name" and model == "unknown":
                    model = value.strip()
                elif key == "processor":
                    count += 1
                elif key == "flags" and "avx512f" in value.split():
                    avx512 = True
    except OSError:
        model = platform.processor() or platform.machine()
    extras = [f"{count or os.cpu_count()} logical CPUs", platform.machine()]
    if avx512:
        extras.append("AVX-512")
    return f"{model} ({', '.join(extras)})"


def command_line() -> str:
    exe = sys.executable
    try:
        rel = os.path.relpath(exe)
        if not rel.startswith(".."):
            exe = rel
    except ValueError:
        pass
    return shlex.join([exe, *sys.argv])


def _spread(values: Sequence[float], scale: float = 1.0, fmt: str = ".1f") -> str:
    med, lo, hi = statistics.median(values) * scale, min(values) * scale, max(values) * scale
    return f"{med:{fmt}} ({lo:{fmt}}–{hi:{fmt}})"


def target_lines(results: Sequence[ModelResult], threads: int, quick: bool) -> list[str]:
    lines = []
    by_name = {r.name: r for r in results}
    for name, target in TARGETS.items():
        r = by_name[name]
        verdict = "PASS" if r.throughput >= target else "FAIL"
        lines.append(
            f"{verdict} {name}: {r.throughput:.2f} samples/s at batch {r.batch}, {threads} threads "
            f"(target >= {target}; authors' implementation {REFERENCE_THROUGHPUT[name]})"
            + (f" [host busy: {r.batch_cores:.2f} cores]" if _busy_warning(r.batch_cores) else "")
        )
    if quick or threads != 2:
        lines.append("note: targets are defined at batch 32 with 2 threads; this run is not comparable")
    return lines


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
    batch = results[0].batch
    out = [
        START_MARKER,
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
        "",
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
        "",
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
    out += [
        "",
        "### Targets",
        "",
        "Eval throughput at batch 32 with 2 threads: transpose_r_a4 >= 6 samples/s, transpose_h_a4 >= 2.2. "
        f"Reference: the authors' implementation on this kind of machine gives {REFERENCE_THROUGHPUT['transpose_r_a4']}"
        f" and {REFERENCE_THROUGHPUT['transpose_h_a4']} samples/s.",
        "",
        "```",
        *target_lines(results, threads, quick),
        "```",
        END_MARKER,
    ]
    return "\n".join(out) + "\n"


def write_section(path: Path, section: str) -> None:
    """Replace the text between the markers (inclusive), append the section, or create the file."""
    if path.exists():
        text = path.read_text()
        start, end = text.find(START_MARKER), text.find(END_MARKER)
        if start != -1 and end > start:
            text = text[:start] + section.rstrip("\n") + text[end + len(END_MARKER) :]
        else:
            text = text.rstrip("\n") + "\n\n" + section
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        text = (
            "# Benchmarks\n\n"
            "Sections between `<!-- name:start -->` and `<!-- name:end -->` markers are generated; "
            "each is rewritten by the script named in it.\n\n" + section
        )
    path.write_text(text)


# --------------------------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    parser.add_argument("--quick", action="store_true", help="smoke test: batch 4, few repeats, no report by default")
    parser.add_argument("--out", type=Path, default=None, help=f"markdown file (default {DEFAULT_OUT})")
    parser.add_argument("--probe", help=argparse.SUPPRESS)  # internal: one Table 2 configuration, as JSON
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.probe:
        spec = json.loads(args.probe)
        spec["image_size"] = tuple(spec["image_size"])
        print(PROBE_PREFIX + json.dumps(asdict(run_probe(ProbeSpec(**spec)))), flush=True)
        return 0

    torch.set_num_threads(args.threads)
    out_path: Path | None = args.out if args.out is not None else (None if args.quick else DEFAULT_OUT)
    if args.quick:
        batch, latency_runs, batch_runs, attention_runs = 4, (1, 3), (1, 2), (0, 1)
        attention_configs = [((256, 192), 2), ((384, 288), 1)]
    else:
        batch, latency_runs, batch_runs, attention_runs = 32, (3, 15), (1, 5), (1, 3)
        attention_configs = [((256, 192), 8), ((384, 288), 2)]

    started = datetime.now().astimezone()
    t0 = time.perf_counter()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU: {cpu_description()}", flush=True)
    gemm_before = matmul_gflops()
    print(f"fp32 GEMM: {gemm_before:.0f} GFLOP/s", flush=True)

    print(f"Table 1: models at {IMAGE_SIZE[0]}x{IMAGE_SIZE[1]}", flush=True)
    results = []
    for name in (*PAPER_MODELS, BASELINE_NAME):
        print(f"{name}", flush=True)
        results.append(measure_model(name, batch, latency_runs, batch_runs))
        gc.collect()

    print(f"Table 2: {ATTENTION_MODEL}, SDPA vs explicit attention (one subprocess each)", flush=True)
    rows = measure_attention(attention_configs, args.threads, *attention_runs)

    gemm_after = matmul_gflops()
    print(f"fp32 GEMM: {gemm_after:.0f} GFLOP/s", flush=True)
    print("Targets:", flush=True)
    for line in target_lines(results, args.threads, args.quick):
        print(f"  {line}", flush=True)

    elapsed = time.perf_counter() - t0
    section = render(
        results,
        rows,
        threads=args.threads,
        quick=args.quick,
        started=started,
        elapsed_s=elapsed,
        gemm=(gemm_before, gemm_after),
        latency_runs=latency_runs,
        batch_runs=batch_runs,
        attention_runs=attention_runs,
    )
    if out_path is not None:
        write_section(out_path, section)
        print(f"wrote {out_path}", flush=True)
    else:
        print("--quick without --out: no report written", flush=True)
    print(f"done in {elapsed / 60:.1f} min", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
