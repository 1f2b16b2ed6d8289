"""DeepSpeed training on CPU with gloo: 2 processes equal 1 process with twice the batch; a run killed at any
moment (mid-epoch, during a checkpoint write) and started again with the same command ends where an
uninterrupted run ends, with either loader on 1 or 2 processes; a run resumes on another number of processes
(ZeRO 0, 1, 2) with the same global batch; a run after a code change trains afresh."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from training_runs import (
    ENV,
    REPO,
    assert_same_updates,
    kill_at,
    losses,
    run,
    set_section,
    weights,
    write_params,
    write_test_shards,
)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def shards(realdata, tmp_path_factory) -> Path:
    return write_test_shards(realdata, tmp_path_factory.mktemp("train_shards"))


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
    train = {"epochs": 3, "checkpoint_every_steps": 1, "dropout": 0.1}
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
    train = {"epochs": 3, "checkpoint_every_steps": 1, "zero_stage": zero}
    config = f"infra/deepspeed/zero{zero}_fp32.json"
    straight, params = (write_params(tmp_path, shards, n, 2, processes=2, **train) for n in ("straight", "elastic"))
    for path in (straight, params):
        set_section(path, deepspeed_config=config)
    run(straight, processes=2)
    kill_at(params, 2, tmp_path / "elastic", "step", epoch=1, step=1)
    later = kill_at(params, 1, tmp_path / "elastic", "step", epoch=2, step=2)
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
