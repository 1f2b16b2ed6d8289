"""DeepSpeed training on CPU with gloo: 2 processes equal 1 process with twice the batch; a run killed at any
moment (mid-epoch, during a checkpoint write) and started again with the same command ends where an
uninterrupted run ends, with either loader on 1 or 2 processes; a run resumes on another number of processes
(ZeRO 0, 1, 2) with the same global batch; a run after a code change trains afresh."""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch
import yaml

from dataops.datasets import read_coco_keypoints
from dataops.shards import ShardConfig, write_shards
from transpose.engine.distributed import free_port
from transpose.models import create_model

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def shards(realdata, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("train_shards")
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
    step), "writing" while a checkpoint folder is being written (not yet sealed), "random" after a seeded
    random delay past the first checkpoint. Returns what the pointer said when it was killed."""
    proc = subprocess.Popen(command(params, processes), cwd=REPO, env=ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)  # fmt: skip
    ckpt = run_dir / "checkpoints"
    deadline, delay, killed = time.time() + 300, random.Random(7).uniform(0.5, 3.0), None
    first_seen = None
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
            elif moment == "random" and pointer:
                first_seen = first_seen or time.time()
                if time.time() - first_seen > delay:
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


def test_two_processes_equal_one_process_with_twice_the_batch(shards, tmp_path):
    run(write_params(tmp_path, shards, "one", batch=4, epochs=2), processes=1)
    run(write_params(tmp_path, shards, "two", batch=2, processes=2, epochs=2), processes=2)
    assert_same_updates(weights(tmp_path / "one"), weights(tmp_path / "two"))
    assert losses(tmp_path / "one") == pytest.approx(losses(tmp_path / "two"), rel=1e-4)  # the rank mean is logged
    assert losses(tmp_path / "two")[-1] < losses(tmp_path / "two")[0]


@pytest.mark.parametrize(
    ("loader", "processes", "moment"),
    [("torch", 1, "step"), ("torch", 2, "writing"), ("dali", 1, "writing"), ("dali", 2, "random")],
)
def test_a_killed_run_resumes_bitwise(shards, tmp_path, loader, processes, moment):
    """Killed mid-epoch, during a checkpoint write or at a random moment, the same command resumes and ends
    bit-identical to an uninterrupted run, dropout on (its RNG resumes too); the resumed epoch's logged mean
    loss covers the whole epoch."""
    train = {"epochs": 4, "checkpoint_every_steps": 1, "dropout": 0.1}
    batch = 4 // processes
    run(write_params(tmp_path, shards, "straight", batch, loader, processes, **train), processes)
    params = write_params(tmp_path, shards, "killed", batch, loader, processes, **train)
    kill_at(params, processes, tmp_path / "killed", moment)
    output = run(params, processes)
    assert "resumed from" in output
    straight, resumed = weights(tmp_path / "straight"), weights(tmp_path / "killed")
    assert all(torch.equal(straight[k], resumed[k]) for k in straight), [
        k for k in straight if not torch.equal(straight[k], resumed[k])
    ]
    assert losses(tmp_path / "killed") == pytest.approx(losses(tmp_path / "straight"), rel=1e-6)


@pytest.mark.parametrize("zero", [0, 1, 2])
def test_a_run_resumes_on_another_number_of_processes(shards, tmp_path, zero):
    """2 processes killed mid-epoch resume on 1, which is killed mid-epoch and resumes on 2: the same global
    batch of 4, the same samples per step (the twin deals the global batch out), the same lr schedule, and
    the result of an uninterrupted run to float32 summation order."""
    train = {"epochs": 4, "checkpoint_every_steps": 1, "zero_stage": zero}
    config = f"infra/deepspeed/zero{zero}_fp32.json"
    straight, params = (write_params(tmp_path, shards, n, 2, processes=2, **train) for n in ("straight", "elastic"))
    for path in (straight, params):
        section = yaml.safe_load(path.read_text())
        section["pretrain"]["deepspeed_config"] = config
        path.write_text(yaml.safe_dump(section))
    run(straight, processes=2)
    kill_at(params, 2, tmp_path / "elastic", "step", epoch=1, step=1)
    later = kill_at(params, 1, tmp_path / "elastic", "step", epoch=3, step=2)
    assert later["world_size"] == 1 and later["global_batch"] == 4
    output = run(params, processes=2)
    assert "written by 1 processes, this run has 2: resuming elastically with the same global batch of 4" in output
    assert_same_updates(weights(tmp_path / "straight"), weights(tmp_path / "elastic"))
    assert losses(tmp_path / "elastic") == pytest.approx(losses(tmp_path / "straight"), rel=1e-4)


def test_the_dali_loader_refuses_to_resume_on_another_number_of_processes(shards, tmp_path):
    params = write_params(tmp_path, shards, "dali", 2, "dali", 2, epochs=3, checkpoint_every_steps=1)
    kill_at(params, 2, tmp_path / "dali", "step", epoch=1, step=1)
    output = run(params, processes=1, expect_failure=True)
    assert "the DALI loader's position is per process" in output and "resume with 2 processes" in output


def test_a_changed_code_file_trains_afresh_and_keeps_the_old_checkpoints(shards, tmp_path):
    """The checkpoint fingerprint covers the code the stage runs: after a change to a file it imports, the same
    command trains from scratch (the finished run is not 'resumed'), and the old run's checkpoints are moved aside."""
    project = tmp_path / "project"
    for package in ("cli", "pipelines", "mlops", "dataops", "transpose", "infra"):
        shutil.copytree(REPO / package, project / package, ignore=shutil.ignore_patterns("__pycache__"))
    params = write_params(tmp_path, shards, "copied", batch=4, epochs=1)

    def train() -> str:
        argv = [sys.executable, "-m", "pipelines.train", "--stage", "pretrain", "--params", str(params), "--no-mlflow"]
        done = subprocess.run(argv, cwd=project, env=ENV, capture_output=True, text=True, timeout=600)
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
