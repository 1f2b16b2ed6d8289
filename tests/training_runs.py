"""Training runs as a user starts them, for the tests: tiny params files, the same command on 1 or N processes,
kills at chosen moments (the whole process tree), and comparisons of what runs wrote."""

from __future__ import annotations

import contextlib
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import psutil
import torch
import yaml

from dataops.datasets import read_coco_keypoints
from dataops.shards import ShardConfig, write_shards
from transpose.engine.distributed import free_port
from transpose.models import create_model

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def write_test_shards(realdata: Path, out: Path) -> Path:
    """The real COCO fixture's persons as train shards of 6 samples."""
    records, report, kset = read_coco_keypoints(realdata / "coco" / "test_coco.json", realdata / "coco")
    write_shards(records, kset, out, "train", ShardConfig(samples_per_shard=6, workers=1), report, progress=False)
    return out


def write_params(
    tmp: Path, shards: Path, name: str, batch: int, loader: str = "torch", processes: int = 1, **train
) -> Path:
    section = {
        "model": "transpose_r_tiny",
        "image_size": [64, 48],
        "shards": str(shards),
        "out_dir": str(tmp / name),
        "loader": loader,
        "processes": processes,
        "batch_size": batch,
        "workers": 0 if loader == "torch" else 1,
        "validate": False,
        "train": {"lr": 1e-3, "dropout": 0.0, "freeze_bn": True, "seed": 22, **train},
    }
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"pretrain": section}))
    return path


def set_section(params: Path, **values) -> None:
    """Change keys of a params file's pretrain section."""
    data = yaml.safe_load(params.read_text())
    data["pretrain"].update(values)
    params.write_text(yaml.safe_dump(data))


def command(params: Path, processes: int) -> list[str]:
    base = ["-m", "pipelines.train", "--stage", "pretrain", "--params", str(params), "--no-mlflow"]
    if processes == 1:
        return [sys.executable, *base]
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes),
            "--master_addr", "127.0.0.1", "--master_port", str(free_port()), *base]  # fmt: skip


def run(params: Path, processes: int, expect_failure: bool = False) -> str:
    """Train to the end (or, expect_failure, to a non-zero exit); returns stdout + stderr."""
    done = subprocess.run(command(params, processes), cwd=REPO, env=ENV, capture_output=True, text=True, timeout=600)
    output = done.stdout + done.stderr
    assert (done.returncode != 0) == expect_failure, output[-6000:]
    return output


def kill_tree(pid: int) -> None:
    """SIGKILL a launcher and every worker under it (torchrun's workers live in sessions of their own, so a
    process-group kill would leave them training)."""
    try:
        parent = psutil.Process(pid)
    except psutil.NoSuchProcess:
        return
    for proc in [*parent.children(recursive=True), parent]:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.kill()


def kill_at(params: Path, processes: int, run_dir: Path, moment: str, epoch: int = 1, step: int = 1) -> dict:
    """Start a run and SIGKILL it (all its processes) at `moment`: "step" once the pointer reaches (epoch,
    step), "writing" while a checkpoint folder is being written (not yet sealed), "random" a seeded random
    0-50 ms after a seeded random global step (2-8) was checkpointed. Returns what the pointer said then."""
    proc = subprocess.Popen(command(params, processes), cwd=REPO, env=ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)  # fmt: skip
    ckpt = run_dir / "checkpoints"
    draw = random.Random(7)
    deadline, target, delay, killed = time.time() + 300, draw.randint(2, 8), draw.uniform(0.0, 0.05), None
    try:
        while time.time() < deadline and proc.poll() is None and killed is None:
            pointer = _pointer(ckpt)
            if moment == "step" and pointer and (pointer["epoch"], pointer["step_in_epoch"]) >= (epoch, step):
                killed = pointer
            elif (
                moment == "writing"
                and pointer
                and any(t.is_dir() and t.name[0] == "e" and not (t / "complete.json").exists() for t in ckpt.iterdir())
            ):
                killed = {**pointer, "writing": True}
            elif moment == "random" and pointer and pointer["global_step"] >= target:
                time.sleep(delay)
                killed = pointer
            if killed is None:
                time.sleep(0.002)
    finally:
        kill_tree(proc.pid)
        proc.wait(timeout=60)
    assert killed is not None, f"the run ended before it could be killed ({moment})"
    assert not (run_dir / "final.pth").exists()
    return killed


def _pointer(ckpt: Path) -> dict | None:
    try:
        return json.loads((ckpt / "latest.json").read_text())
    except (OSError, ValueError):
        return None


def weights(out_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(out_dir / "final.pth", weights_only=True)


def assert_same_updates(one: dict, two: dict) -> None:
    """Two runs from the same start made the same updates, to float32 summation order (1e-3 of their size)."""
    torch.manual_seed(22)  # the initial weights both runs started from (pipelines.train seeds the same way)
    start = create_model("transpose_r_tiny", image_size=(64, 48)).state_dict()
    assert one.keys() == two.keys()
    for key, value in start.items():
        if not value.is_floating_point() or key == "pos_embedding":
            continue
        update_one, update_two = one[key] - value, two[key] - value
        # float32 sums in another order (all-reduce vs one batch), amplified by Adam's normalisation where
        # gradients are tiny: the updates agree to 1e-3 of their size
        assert (update_one - update_two).norm() <= 1e-3 * update_one.norm() + 1e-7, key


def losses(run_dir: Path) -> list[float]:
    return [r["train/loss_epoch"] for r in json.loads((run_dir / "history.json").read_text())]
