"""benchmarks/gpu_check.py in its CPU mode on the tiny plan: the code of the GPU check runs in CI, so it cannot rot
before a GPU is lent (on a GPU the same script runs `mixed` DALI decoding and NCCL)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from report_sections import section

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "gpu_check.py"
CHECKS = (
    "loader parity (DALI cpu vs twin)",
    "loss fp32 (cpu vs CPU fp32)",
    "loss bf16 (cpu vs CPU fp32)",
    "eval fp32 (cpu vs CPU)",
    "eval explicit attention (cpu)",
    "eval bf16 (cpu vs fp32)",
)
TRAINING = ("fp32, SDPA", "bf16, SDPA", "fp32, explicit attention (reference formulation)")


def test_the_gpu_check_runs_every_path_in_cpu_mode_and_writes_its_section(tmp_path):
    report = tmp_path / "benchmarks.md"
    report.write_text("# Benchmarks\n\n<!-- models:start -->\nanother script's section\n<!-- models:end -->\n")
    cmd = [sys.executable, str(SCRIPT), "--device", "cpu", "--tiny", "--report", str(report)]
    cmd += ["--work", str(tmp_path / "work")]
    env = {**os.environ, "TQDM_DISABLE": "1"}
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    out = done.stdout
    assert done.returncode == 0, out[-6000:] + done.stderr[-6000:]
    lines = out.splitlines()
    assert not [ln for ln in lines if ln.startswith("FAIL")], out[-6000:]
    for name in CHECKS:  # one PASS line per correctness check, with what it measured against its tolerance
        assert [ln for ln in lines if ln.startswith(f"PASS {name}: ") and "(tolerance " in ln], (name, out[-6000:])
    assert [ln for ln in lines if re.match(r"(PASS|WARN) DALI GPU graph \(CPU mode\): ", ln)]
    for setting in TRAINING:  # the throughput runs through the real Trainer
        assert [ln for ln in lines if re.match(rf"INFO train {re.escape(setting)}: \d+\.\d samples/s", ln)], setting
    assert len([ln for ln in lines if ln.startswith("INFO eval ")]) == 3
    assert len([ln for ln in lines if ln.startswith("INFO loader ")]) == 2
    assert len([ln for ln in lines if ln.startswith("TARGET ")]) == 2

    text = report.read_text()
    assert "another script's section" in section(text, "models")  # the other sections stay as they were
    gpu = section(text, "gpu")
    assert "| check | compared | tolerance | measured | result |" in gpu
    for name in CHECKS:
        assert re.search(rf"^\| {re.escape(name)} \|.*\| \*\*PASS\*\* \|$", gpu, re.M), name
    for setting in TRAINING:
        assert re.search(rf"^\| {re.escape(setting)} \| \d+\.\d \| \d+ \|", gpu, re.M), setting
    assert "| DALI cpu |" in gpu and "### Targets" in gpu and "CPU mode" in gpu


def test_cpu_mode_writes_no_report_unless_asked(monkeypatch):
    monkeypatch.syspath_prepend(str(SCRIPT.parent))
    before = set(sys.modules)
    try:
        import gpu_check

        assert gpu_check.report_path(gpu_check.parse_args(["--device", "cpu", "--tiny"])) is None
        asked = gpu_check.parse_args(["--device", "cpu", "--report", "x.md"])
        assert gpu_check.report_path(asked) == Path("x.md")
        assert gpu_check.report_path(gpu_check.parse_args(["--device", "cuda"])) == REPO / "docs" / "benchmarks.md"
    finally:  # the benchmarks' top-level modules (report, probe, ...) leave with their folder
        for name in set(sys.modules) - before:
            if str(getattr(sys.modules[name], "__file__", "") or "").startswith(str(SCRIPT.parent)):
                del sys.modules[name]
