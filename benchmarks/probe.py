"""The Table 2 probe: one configuration's first-forward peak RSS and forward times, measured in a fresh process."""

from __future__ import annotations

import gc
import json
import resource
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import Tensor

from measure import time_calls
from model_zoo import build_model, make_input
from report import REPO_ROOT

PROBE_PREFIX = "PROBE_RESULT "


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


def status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def reset_peak_rss() -> bool:
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
    was_reset = reset_peak_rss()
    baseline = status_kib("VmRSS")
    use_hwm = baseline is not None and status_kib("VmHWM") is not None
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
        peak = status_kib("VmHWM") if use_hwm else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        torch.save(heatmaps, spec.heatmaps_path)
        del heatmaps
        batch_s, cores = time_calls(forward, spec.warmup, spec.repeats)
    return ProbeResult(tokens, baseline, int(peak or 0), source, batch_s, cores)


def probe_reply(spec_json: str) -> str:
    """The probe mode of the entry point: run the ProbeSpec given as JSON, return the result line it prints."""
    spec = json.loads(spec_json)
    spec["image_size"] = tuple(spec["image_size"])
    return PROBE_PREFIX + json.dumps(asdict(run_probe(ProbeSpec(**spec))))


def launch_probe(spec: ProbeSpec, script: Path) -> ProbeResult:
    """Run `script --probe SPEC` in a fresh interpreter and parse its result line.

    `script` is the entry point (bench_models.py), run by path: Python puts its folder, benchmarks/, first on
    the child's sys.path, so the child imports this module and its siblings as the parent did.
    """
    cmd = [sys.executable, str(script), "--probe", json.dumps(asdict(spec))]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO_ROOT)
    lines = [line for line in proc.stdout.splitlines() if line.startswith(PROBE_PREFIX)]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"probe {spec} failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
    return ProbeResult(**json.loads(lines[-1][len(PROBE_PREFIX) :]))
