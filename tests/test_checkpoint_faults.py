"""Checkpoints survive every fault: a damaged newest checkpoint falls back to the previous complete one (and the
run still ends bit-identical to an uninterrupted one), a missing pointer resumes the newest complete one, a full
disk says ENOSPC and removes the half-written folder, a non-finite loss stops before anything is written (or
skips the step), and a configuration change moves the old checkpoints aside instead of deleting them."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from training_runs import REPO, command, run, weights, write_params, write_test_shards

pytestmark = pytest.mark.slow
TRAIN = {"epochs": 2, "checkpoint_every_steps": 1, "keep_checkpoints": 3, "dropout": 0.1}


@pytest.fixture(scope="module")
def shards(realdata, tmp_path_factory) -> Path:
    return write_test_shards(realdata, tmp_path_factory.mktemp("fault_shards"))


@pytest.fixture(scope="module")
def finished(shards, tmp_path_factory) -> Path:
    """An uninterrupted run: its final weights are what every recovered run must end with."""
    tmp = tmp_path_factory.mktemp("finished")
    run(write_params(tmp, shards, "run", batch=4, **TRAIN), processes=1)
    return tmp / "run"


def newest(ckpt: Path) -> Path:
    return sorted(p for p in ckpt.iterdir() if p.is_dir() and p.name.startswith("e"))[-1]


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def flip_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


DAMAGE = {
    "newest folder deleted": (lambda c: shutil.rmtree(newest(c)), "whose folder is missing"),
    "model states truncated": (
        lambda c: truncate(newest(c) / "mp_rank_00_model_states.pt"),
        "mp_rank_00_model_states.pt is",
    ),
    "a flipped byte in the model states": (
        lambda c: flip_a_byte(newest(c) / "mp_rank_00_model_states.pt"),
        "does not match its sha256",
    ),
    "rank0.pt truncated": (lambda c: truncate(newest(c) / "rank0.pt"), "rank0.pt is"),
    "save interrupted (no seal)": (lambda c: (newest(c) / "complete.json").unlink(), "its save was interrupted"),
    "latest.json truncated": (lambda c: truncate(c / "latest.json"), "latest.json is unreadable"),
    "latest.json deleted": (lambda c: (c / "latest.json").unlink(), "latest.json is missing"),
}


@pytest.mark.parametrize("case", list(DAMAGE))
def test_a_damaged_checkpoint_falls_back_and_the_run_ends_as_if_nothing_happened(finished, shards, tmp_path, case):
    damage, said = DAMAGE[case]
    out = tmp_path / "run"
    shutil.copytree(finished / "checkpoints", out / "checkpoints")
    tags_before = sorted(p.name for p in (out / "checkpoints").iterdir() if p.is_dir())
    damage(out / "checkpoints")
    output = run(write_params(tmp_path, shards, "run", batch=4, **TRAIN), processes=1)
    assert said in output and "resumed from" in output and "training afresh" not in output
    resumed_from = output.split("resumed from ")[1].split()[0]
    pointer_damaged = case.startswith("latest.json")
    expected = tags_before[-1] if pointer_damaged else tags_before[-2]
    assert Path(resumed_from).name == expected  # the newest intact checkpoint, not a fresh start
    reference, recovered = weights(finished), weights(out)
    assert all(torch.equal(reference[k], recovered[k]) for k in reference)


@pytest.mark.parametrize("processes", [1, 2])
def test_a_full_disk_says_enospc_and_keeps_the_last_good_checkpoint(shards, tmp_path, processes):
    """out_dir on a 14 MiB tmpfs (a private mount namespace) that holds two checkpoints of 5.5 MB but not a
    third: one process fails writing it (the half-written folder is removed), two processes check the free
    space first (a rank failing inside DeepSpeed's save would leave the other waiting) and write nothing."""
    if subprocess.run(["unshare", "-rm", "true"], capture_output=True).returncode != 0:
        pytest.skip("no user/mount namespaces here (unshare -rm) for a small tmpfs")
    disk, report = tmp_path / "disk", tmp_path / "report"
    disk.mkdir()
    report.mkdir()
    params = write_params(disk, shards, "run", 4 // processes, processes=processes, **TRAIN)
    params = params.rename(tmp_path / "run.yaml")
    ckpt = disk / "run" / "checkpoints"
    train = " ".join(command(params, processes))
    script = f"""
        set -u
        mount -t tmpfs -o size=14m tmpfs {disk}
        cd {REPO} && {train} > {report}/out.txt 2>&1
        echo $? > {report}/rc
        ls {ckpt} > {report}/listing.txt
        cp {ckpt}/latest.json {report}/latest.json
        for t in {ckpt}/e*; do [ -f $t/complete.json ] && echo $(basename $t) >> {report}/sealed.txt; done
    """
    subprocess.run(["unshare", "-rm", "bash", "-c", script], timeout=600, check=True)
    output = (report / "out.txt").read_text()
    assert (report / "rc").read_text().strip() != "0"
    assert "no space left on the device writing checkpoint" in output and "ENOSPC" in output, output[-3000:]
    assert ("nothing was written" in output) == (processes == 2)
    listing = (report / "listing.txt").read_text().split()
    sealed = (report / "sealed.txt").read_text().split()
    pointer = json.loads((report / "latest.json").read_text())
    assert len(sealed) == 2 and pointer["tag"] == max(sealed)  # the pointer stays on the last good checkpoint
    assert sorted(t for t in listing if t.startswith("e")) == sorted(sealed)  # no half-written folder left


def test_a_nonfinite_loss_stops_before_anything_is_written(shards, tmp_path):
    params = write_params(tmp_path, shards, "diverge", batch=4, epochs=2, lr=1e30, checkpoint_every_steps=1)
    output = run(params, processes=1, expect_failure=True)
    assert "the loss is not finite at epoch 1, step" in output and "nothing was written" in output
    assert "train.nonfinite_loss: skip" in output
    assert not (tmp_path / "diverge" / "final.pth").exists()
    ckpt = tmp_path / "diverge" / "checkpoints"
    pointer = json.loads((ckpt / "latest.json").read_text())
    state = torch.load(ckpt / pointer["tag"] / "mp_rank_00_model_states.pt", weights_only=False)
    assert all(torch.isfinite(v).all() for v in state["module"].values() if v.is_floating_point())


def test_a_nonfinite_loss_can_skip_the_step_instead(shards, tmp_path):
    params = write_params(tmp_path, shards, "skip", batch=4, epochs=2, lr=1e30, nonfinite_loss="skip")
    output = run(params, processes=1)
    assert "non-finite loss at epoch 1, step" in output and "step skipped" in output
    history = json.loads((tmp_path / "skip" / "history.json").read_text())
    assert history[-1]["train/skipped_steps"] >= 1


def test_a_configuration_change_keeps_the_previous_checkpoints(shards, tmp_path):
    run(write_params(tmp_path, shards, "run", batch=4, epochs=1), processes=1)
    first = json.loads((tmp_path / "run" / "checkpoints" / "latest.json").read_text())
    output = run(write_params(tmp_path, shards, "run", batch=4, epochs=2), processes=1)
    assert "training afresh" in output and "section changed" in output
    kept = list((tmp_path / "run" / "checkpoints-previous").iterdir())
    assert len(kept) == 1 and str(kept[0]) in output
    assert json.loads((kept[0] / "latest.json").read_text())["tag"] == first["tag"]
    assert (kept[0] / first["tag"] / "complete.json").is_file()  # intact, resumable by moving it back
