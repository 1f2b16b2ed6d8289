"""benchmarks/profile_default_step.py end to end at a tiny input: every formulation's step is split into op
classes that add up to the profiled step, each formulation's own work lands in its own class, and the section's
bound follows from its figures."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import yaml
from report_sections import section

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "profile_default_step.py"


def test_the_profile_splits_each_formulation_into_classes_that_add_up(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text(
        yaml.safe_dump({"pretrain": {"model": "transpose_r_tiny", "image_size": [64, 48], "batch_size": 2}})
    )
    out = tmp_path / "benchmarks.md"
    cmd = [sys.executable, str(SCRIPT), "--params", str(params), "--rounds", "1", "--out", str(out)]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    body = section(out.read_text(), "default_profile")
    assert "`transpose_r_tiny` at 64x48, batch 2" in body

    rows = {}
    for line in body.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if line.startswith("| ") and len(cells) == 5 and not line.startswith("| op class"):
            rows[cells[0]] = cells[1:]
    before, nhwc, tiled_torch, default = range(4)

    def ms(cls: str, column: int) -> float:
        cell = rows[cls][column]
        return 0.0 if cell == "-" else float(cell.strip("*").split()[0])

    classes = [name for name in rows if not name.startswith(("**", "step without"))]
    for column in range(4):
        total = ms("**step (sum)**", column)
        assert abs(sum(ms(cls, column) for cls in classes) - total) <= 0.01 * total + 0.1
        for cls in ("convolutions", "linear layers (mm, addmm)", "attention products (bmm)", "optimizer (Adam)"):
            assert ms(cls, column) > 0, (cls, column)
        assert ms("step without the profiler", column) > 0
    # torch draws the masks in the first three formulations, NumPy in the default (outside any op)
    assert all(ms("dropout masks drawn by torch", c) > 0 for c in (before, nhwc, tiled_torch))
    assert ms("dropout masks drawn by torch", default) == 0
    # the tiled attention's own work exists only where the attention is tiled
    assert ms("attention tiles: masks, Python", before) == ms("attention tiles: masks, Python", nhwc) == 0
    assert ms("attention tiles: masks, Python", tiled_torch) > 0 and ms("attention tiles: masks, Python", default) > 0

    share, matrix, default_total = map(
        float, re.search(r"\*\*(\d+)%\*\* of the step \(([\d.]+) ms of ([\d.]+)\)", body).groups()
    )
    assert abs(share - 100 * matrix / default_total) <= 1.0
    bound = float(re.search(r"at most \*\*([\d.]+)x\*\*", body).group(1))
    before_ms = float(re.search(r"before issue 17 \(([\d.]+) ms unprofiled\)", body).group(1))
    assert abs(bound - before_ms / matrix) <= 0.02 * bound + 0.01
