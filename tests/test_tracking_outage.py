"""Tracking never stops training: against a real `mlflow server` that is killed and restarted mid-run, the log
calls return at once and arrive in the one run once the server is back; a training stage rides out an outage
and ends 0 with every checkpoint and every epoch's metrics in one FINISHED run; a killed and rerun stage
continues its MLflow run; a stage that dies marks its run FAILED; what cannot be delivered is written down and
can be sent later."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import suppress
from pathlib import Path

import pytest
import yaml
from training_runs import write_test_shards

from mlops import tracking
from mlops.tracking import (
    UNDELIVERED,
    MlflowTracker,
    TrackingUnavailable,
    replay_undelivered,
    resumable_run_id,
    short_http_attempts,
    stage_run,
)

mlflow = pytest.importorskip("mlflow")
REPO = Path(__file__).resolve().parents[1]
MLFLOW_CLI = Path(sys.executable).parent / "mlflow"
FAST_RETRIES = {"TRANSPOSE_TRACKING_RETRY_MIN_S": "0.2", "TRANSPOSE_TRACKING_RETRY_MAX_S": "1"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`mlflow server` on 127.0.0.1 with a sqlite store and artifacts in a folder; kill() takes all of it down
    (its own session), start() brings it back on the same port and store."""

    def __init__(self, root: Path):
        self.root, self.port = root, free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self, wait_s: float = 90) -> float:
        started = time.monotonic()
        argv = [str(MLFLOW_CLI), "server", "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1",
                "--backend-store-uri", f"sqlite:///{self.root / 'mlflow.db'}",
                "--artifacts-destination", str(self.root / "artifacts")]  # fmt: skip
        env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}  # no huey job consumers
        with open(self.root / "server.log", "a") as log:
            self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        while time.monotonic() - started < wait_s:
            assert self.proc.poll() is None, (self.root / "server.log").read_text()[-3000:]
            with suppress(OSError):
                if urllib.request.urlopen(f"{self.uri}/health", timeout=1).read().strip() == b"OK":
                    return time.monotonic() - started
            time.sleep(0.2)
        raise AssertionError(f"mlflow server not up in {wait_s} s: {(self.root / 'server.log').read_text()[-3000:]}")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)
        self.proc = None


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = Server(tmp_path_factory.mktemp("mlflow_server"))
    srv.start()
    yield srv
    srv.kill()


@pytest.fixture
def tracked(server, monkeypatch, request):
    """This process tracks to the test server, under a pipeline id of its own."""
    if server.proc is None:
        server.start()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", server.uri)
    monkeypatch.setenv("TRANSPOSE_PIPELINE_ID", f"outage-{request.node.name}-{time.time_ns()}")
    for key, value in FAST_RETRIES.items():
        monkeypatch.setenv(key, value)
    yield mlflow.MlflowClient(tracking_uri=server.uri)
    with suppress(Exception):
        while mlflow.active_run() is not None:
            mlflow.end_run()
    mlflow.set_tracking_uri(None)  # leave no MLflow state to the other tests of this process
    with suppress(AttributeError):
        mlflow.tracking.fluent._active_experiment_id = None


def stage_runs(client, pipeline: str, stage: str) -> list:
    experiment = client.get_experiment_by_name(tracking.EXPERIMENT)
    query = f"tags.`transpose.pipeline` = '{pipeline}' and tags.`transpose.stage` = '{stage}'"
    return client.search_runs([experiment.experiment_id], filter_string=query)


def steps(client, run_id: str, key: str) -> list[int]:
    return sorted(m.step for m in client.get_metric_history(run_id, key))


# ---- the tracker -------------------------------------------------------------------------------------------------
def test_log_calls_return_at_once_while_the_server_is_down_and_arrive_in_the_run_after_it_returns(
    server, tracked, tmp_path
):
    artifact = tmp_path / "notes.txt"
    artifact.write_text("written while the server was down\n")
    with stage_run("outage_unit", {"out_dir": str(tmp_path), "lr": 0.1}, short_attempts=True) as tracker:
        tracker.log_metrics({"loss": 1.0}, step=0)
        assert tracker.flush(10)
        server.kill()
        took = []
        for step in range(1, 201):
            started = time.perf_counter()
            tracker.log_metrics({"loss": 1.0 / (step + 1), "val/AP@0.5": 0.5}, step=step)
            took.append(time.perf_counter() - started)
        tracker.log_params({"late": "param"})
        tracker.log_artifact(artifact)
        time.sleep(2)  # the worker fails a few times meanwhile
        assert tracker.failed_attempts >= 1 and tracker.waiting > 0
        restart_s = server.start()
        flush_started = time.monotonic()
    flush_s = time.monotonic() - flush_started
    print(f"log_metrics with the server down: max {max(took) * 1e3:.2f} ms, mean {sum(took) / len(took) * 1e6:.0f} us;"
          f" server restart {restart_s:.1f} s; flush after it {flush_s:.1f} s")  # fmt: skip
    assert max(took) < 0.05  # well under a second: nothing waits for the server
    run = tracked.get_run(tracker.run_id)
    assert run.info.status == "FINISHED"
    assert steps(tracked, tracker.run_id, "loss") == list(range(201))
    assert steps(tracked, tracker.run_id, "val/AP_at_0.5") == list(range(1, 201))
    assert run.data.params["late"] == "param" and run.data.params["outage_unit.lr"] == "0.1"
    assert [a.path for a in tracked.list_artifacts(tracker.run_id)] == ["notes.txt"]
    assert tracked.get_run(run.data.tags["mlflow.parentRunId"]).info.status == "FINISHED"
    assert not (tmp_path / UNDELIVERED).exists()


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_a_stage_that_dies_marks_its_run_failed_and_leaves_no_parent_running(tracked, tmp_path, error):
    with pytest.raises(error), stage_run("dies", {"out_dir": str(tmp_path)}) as tracker:
        tracker.log_metrics({"loss": 2.0}, step=3)
        raise error("the stage died")
    run = tracked.get_run(tracker.run_id)
    assert run.info.status == "FAILED" and run.data.metrics["loss"] == 2.0
    assert tracked.get_run(run.data.tags["mlflow.parentRunId"]).info.status == "FAILED"
    assert mlflow.active_run() is None


def test_what_is_not_delivered_in_the_flush_wait_is_written_down_and_replayed_later(tracked, server, tmp_path):
    """The server away for good at the end: close returns within its bound without raising, a full queue drops
    its oldest metrics (counted), and every call not delivered is in the stage's file, which a later replay
    sends to the run."""
    run_id = tracked.create_run(tracked.get_experiment_by_name(tracking.EXPERIMENT).experiment_id).info.run_id
    dead = mlflow.MlflowClient(tracking_uri=f"http://127.0.0.1:{free_port()}")
    artifact = tmp_path / "history.json"
    artifact.write_text("[]\n")
    with short_http_attempts():
        tracker = MlflowTracker(mlflow, run_id, tmp_path, client=dead, queue_max=10)
        for step in range(30):
            tracker.log_metrics({"loss": float(step)}, step=step)
        tracker.log_params({"a": 1})
        tracker.log_artifact(artifact)
        started = time.monotonic()
        report = tracker.close("FINISHED", timeout=1.5)
    assert time.monotonic() - started < 8
    assert report["dropped"] >= 1 and report["delivered"] == 0
    lines = [json.loads(line) for line in (tmp_path / UNDELIVERED).read_text().splitlines()]
    assert sorted(s for line in lines if line["call"] == "log_metrics" for s in [line["step"]]) == list(range(30))
    assert {line["call"] for line in lines} == {"log_metrics", "log_params", "log_artifact", "set_terminated"}
    assert replay_undelivered(tmp_path / UNDELIVERED, tracking_uri=server.uri) == len(lines)
    assert (tmp_path / UNDELIVERED).read_text() == ""
    run = tracked.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.params["a"] == "1"
    assert steps(tracked, run_id, "loss") == list(range(30))


def test_log_model_waits_a_bounded_time_then_fails_with_a_clear_message(monkeypatch, tmp_path):
    monkeypatch.setenv("TRANSPOSE_TRACKING_FINAL_S", "1")
    dead = mlflow.MlflowClient(tracking_uri=f"http://127.0.0.1:{free_port()}")
    with short_http_attempts():
        tracker = MlflowTracker(mlflow, "0" * 32, tmp_path, client=dead)
        started = time.monotonic()
        with pytest.raises(TrackingUnavailable, match=r"weights are on disk; rerun the stage"):
            tracker.log_model(lambda run_id: pytest.fail("the model is logged only once the server answers"))
        assert time.monotonic() - started < 6
        tracker.close(timeout=0)


def test_the_run_to_continue_comes_only_from_a_checkpoint_of_the_same_fingerprint(tmp_path):
    from transpose.engine.checkpoints import seal

    def checkpoint(tag: str, **state) -> Path:
        folder = tmp_path / tag
        folder.mkdir()
        (folder / "rank0.pt").write_bytes(b"state")
        seal(folder, state)
        return folder

    assert resumable_run_id(tmp_path, "fp") is None  # no checkpoint
    checkpoint("e0000s000001", fingerprint="other", tracking_run_id="abc")
    assert resumable_run_id(tmp_path, "fp") is None  # another run's
    checkpoint("e0000s000002", fingerprint="fp", tracking_run_id=None)
    assert resumable_run_id(tmp_path, "fp") is None  # tracked by nobody
    newest = checkpoint("e0000s000003", fingerprint="fp", tracking_run_id="abc")
    assert resumable_run_id(tmp_path, "fp") == "abc"
    (newest / "rank0.pt").write_bytes(b"damaged")  # the trainer will resume the one before: so does tracking
    assert resumable_run_id(tmp_path, "fp") is None


# ---- training stages ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def shards(realdata, tmp_path_factory) -> Path:
    return write_test_shards(realdata, tmp_path_factory.mktemp("outage_shards"))


def write_params(tmp: Path, shards: Path, epochs: int) -> Path:
    section = {
        "model": "transpose_r_tiny",
        "image_size": [64, 48],
        "shards": str(shards),
        "out_dir": str(tmp / "run"),
        "loader": "torch",
        "batch_size": 2,
        "workers": 0,
        "validate": False,
        "train": {"lr": 1e-3, "epochs": epochs, "keep_checkpoints": epochs, "seed": 22, "log_every_steps": 1},
    }
    path = tmp / "params.yaml"
    path.write_text(yaml.safe_dump({"pretrain": section}))
    return path


def training(params: Path, server: Server, pipeline: str, log: Path) -> subprocess.Popen:
    env = {**os.environ, **FAST_RETRIES, "OMP_NUM_THREADS": "1", "MLFLOW_TRACKING_URI": server.uri,
           "TRANSPOSE_PIPELINE_ID": pipeline}  # fmt: skip
    argv = [sys.executable, "-m", "pipelines.train", "--stage", "pretrain", "--params", str(params)]
    with open(log, "a") as out:
        return subprocess.Popen(argv, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def pointer(out_dir: Path) -> dict:
    with suppress(OSError, ValueError):
        return json.loads((out_dir / "checkpoints" / "latest.json").read_text())
    return {}


def wait_for(condition, proc: subprocess.Popen, log: Path, timeout: float = 180):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        assert proc.poll() is None, f"training ended ({proc.returncode}) first:\n{log.read_text()[-4000:]}"
        time.sleep(0.05)
    raise AssertionError(f"timed out:\n{log.read_text()[-4000:]}")


def epoch_checkpoints(out_dir: Path) -> list[str]:
    return sorted(p.name for p in (out_dir / "checkpoints").iterdir() if p.is_dir() and p.name.endswith("s000000"))


@pytest.mark.slow
def test_a_training_stage_rides_out_a_server_outage_into_one_finished_run(server, tracked, shards, tmp_path):
    epochs, pipeline, log = 6, f"outage-e2e-{time.time_ns()}", tmp_path / "train.log"
    out_dir = tmp_path / "run"
    started = time.monotonic()
    proc = training(write_params(tmp_path, shards, epochs), server, pipeline, log)
    try:
        killed_at = wait_for(lambda: pointer(out_dir).get("epoch", 0) >= 1 and pointer(out_dir), proc, log)
        server.kill()
        time.sleep(3)
        during = pointer(out_dir)["epoch"]  # epochs went on without the server
        server.start()
        assert proc.wait(timeout=240) == 0, log.read_text()[-6000:]
    finally:
        with suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    output = log.read_text()
    print(f"training with an outage: {time.monotonic() - started:.1f} s; epoch {killed_at['epoch']} at the kill, "
          f"{during} 3 s later")  # fmt: skip
    assert during > killed_at["epoch"] or "flushing" in output
    assert "MLflow tracking: log_metrics" in output and "failed" in output
    assert epoch_checkpoints(out_dir) == [f"e{e:04d}s000000" for e in range(1, epochs + 1)]
    (run,) = stage_runs(tracked, pipeline, "pretrain")
    assert run.info.status == "FINISHED" and pointer(out_dir)["tracking_run_id"] == run.info.run_id
    per_epoch = steps(tracked, run.info.run_id, "train/loss_epoch")
    assert len(per_epoch) == epochs == len(set(per_epoch))
    assert len(steps(tracked, run.info.run_id, "train/loss")) == pointer(out_dir)["global_step"]
    assert {"history.json", "model.json"} <= {a.path for a in tracked.list_artifacts(run.info.run_id)}
    assert not (out_dir / UNDELIVERED).exists()


@pytest.mark.slow
def test_a_killed_and_rerun_stage_continues_its_mlflow_run(server, tracked, shards, tmp_path):
    epochs, pipeline, log = 4, f"outage-kill-{time.time_ns()}", tmp_path / "train.log"
    out_dir, params = tmp_path / "run", write_params(tmp_path, shards, epochs)
    proc = training(params, server, pipeline, log)
    try:

        def first_epoch_tracked():  # the checkpoint's run has the first epoch's metrics
            latest = pointer(out_dir)
            run_id = latest.get("tracking_run_id") if latest.get("epoch", 0) >= 1 else None
            return run_id if run_id and steps(tracked, run_id, "train/loss_epoch") else None

        first_run = wait_for(first_epoch_tracked, proc, log)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        with suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    assert not (out_dir / "final.pth").exists()
    assert tracked.get_run(first_run).info.status == "RUNNING"  # killed: nothing could mark it
    rerun = training(params, server, pipeline, log)
    assert rerun.wait(timeout=240) == 0, log.read_text()[-6000:]
    assert f"continuing run {first_run}" in log.read_text()
    (run,) = stage_runs(tracked, pipeline, "pretrain")
    assert run.info.run_id == first_run == pointer(out_dir)["tracking_run_id"]
    assert run.info.status == "FINISHED"
    assert len(set(steps(tracked, first_run, "train/loss_epoch"))) == epochs
