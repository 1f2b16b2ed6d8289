"""Promoters on "different machines": separate processes, each with its own lock file, all talking to one real
`mlflow server` over HTTP. The registry itself must serialise them (mlops.registry.locking: tickets)."""

from __future__ import annotations

import json
import os
import random
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

mlflow = pytest.importorskip("mlflow")

from mlops import registry  # noqa: E402
from mlops.registry import EvalData  # noqa: E402

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
MLFLOW = Path(sys.executable).with_name("mlflow")
PROMOTERS = 8

# A promoter: the real `transpose promote` command, with every import done before the start signal so that all
# of them reach the registry within milliseconds of each other.
WORKER = """
import sys, time
from pathlib import Path
import mlflow, mlops.registry, pipelines.promote  # noqa: F401
from cli.main import main
ready, go, delay = Path(sys.argv[1]), Path(sys.argv[2]), float(sys.argv[3])
ready.touch()
while not go.exists():
    time.sleep(0.01)
time.sleep(delay)
sys.exit(main(sys.argv[4:]))
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A tracking server on 127.0.0.1 with a sqlite backend and artifacts in a temp folder."""
    if not MLFLOW.is_file():
        pytest.skip(f"no mlflow executable beside {sys.executable}")
    root = tmp_path_factory.mktemp("server")
    url = f"http://127.0.0.1:{_free_port()}"
    log = open(root / "server.log", "w")  # noqa: SIM115 (closed in teardown)
    cmd = [str(MLFLOW), "server", "--host", "127.0.0.1", "--port", url.rsplit(":", 1)[1], "--workers", "2"]
    cmd += ["--backend-store-uri", f"sqlite:///{root}/mlflow.db", "--artifacts-destination", str(root / "artifacts")]
    proc = subprocess.Popen(cmd, cwd=root, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 90
        while not _healthy(url):
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"mlflow server did not start: {(root / 'server.log').read_text()[-2000:]}")
            time.sleep(0.25)
        yield url, root
    finally:
        os.killpg(proc.pid, 15)  # the server and its workers (its own process group)
        try:
            proc.wait(timeout=3)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            proc.wait()
        log.close()


@pytest.fixture
def remote(server, monkeypatch):
    url, root = server
    monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
    monkeypatch.delenv(registry.LOCK_ENV, raising=False)
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(url)
    yield url, root
    mlflow.set_tracking_uri(previous)


def _versions(name: str, values: list[float], root: Path) -> list[str]:
    """Cheap versions: one run, one external logged model (no artifacts), a version per gate value."""
    folder = root / f"data-{name}"
    (folder / "shards").mkdir(parents=True)
    (folder / "ann.json").write_text("{}")
    (folder / "shards" / "val-manifest.json").write_text(json.dumps({"split": "val"}))
    data = EvalData.from_files("coco", "val", folder / "ann.json", folder / "shards")
    with mlflow.start_run(experiment_id=mlflow.create_experiment(name)) as run:
        model = mlflow.create_external_model(name="model")
    return [
        registry.register(name, model.model_uri, run.info.run_id, {"AP": v}, "AP", data, card={}).version
        for v in values
    ]


def test_promoters_without_a_shared_lock_are_serialised_by_the_registry(remote, tmp_path):
    url, root = remote
    name = "t-machines"
    rng = random.Random(2169)
    values = [round(0.31 + 0.05 * i, 2) for i in range(PROMOTERS)]  # none equal to the holder's 0.4
    rng.shuffle(values)
    holder, *versions = _versions(name, [0.4, *values], root)
    assert len({holder, *versions}) == 1 + PROMOTERS
    registry.promote(name, holder)
    value_of = dict(zip([holder, *versions], [0.4, *values]))

    go = tmp_path / "go"
    procs = []
    for i in rng.sample(range(PROMOTERS), PROMOTERS):  # launched in random order, each with its own lock file
        env = {**os.environ, "MLFLOW_TRACKING_URI": url, registry.LOCK_ENV: str(tmp_path / f"machine-{i}.lock")}
        argv = [str(tmp_path / f"ready-{i}"), str(go), f"{rng.uniform(0, 0.2):.3f}"]
        argv += ["promote", "--name", name, "--version", versions[i]]
        procs.append(subprocess.Popen([sys.executable, "-c", WORKER, *argv], cwd=REPO, env=env, text=True,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE))  # fmt: skip
    deadline = time.monotonic() + 120
    while not all((tmp_path / f"ready-{i}").exists() for i in range(PROMOTERS)):
        assert time.monotonic() < deadline and all(p.poll() is None for p in procs), "a promoter died importing"
        time.sleep(0.05)
    started = time.monotonic()
    go.touch()
    results = [(p.wait(timeout=120), *p.communicate()) for p in procs]
    elapsed = time.monotonic() - started
    for code, out, err in results:
        assert "Traceback" not in err and "Error:" not in err.replace("error:", ""), err
        assert code == 0 or (code == 3 and "holds the promotion turn" in err), (code, out, err)
    past = registry.history(name)
    print(f"\n{PROMOTERS} promoters done {elapsed:.1f}s after the start signal\n{registry.format_history(past)}")
    assert [d.seq for d in past] == list(range(1, PROMOTERS + 2)), [(d.seq, d.candidate) for d in past]
    assert sorted(d.candidate for d in past[1:]) == sorted(versions)  # every promoter decided exactly once
    assert past[0].candidate == holder and past[0].moved
    current = holder
    for d in past[1:]:  # every decision was taken against the holder of that moment, and only a better one moved
        assert d.holder == current, f"decision #{d.seq} compared v{d.candidate} with stale holder v{d.holder}"
        assert d.holder_value == value_of[current]
        assert d.moved == (value_of[d.candidate] > value_of[current]), d
        if d.moved:
            current = d.candidate
    assert not any(d.reason.startswith("repair") for d in past)
    best = max(versions, key=value_of.get)
    assert current == best and registry.champion(name).version == best
    tags = mlflow.MlflowClient().get_registered_model(name).tags
    assert not [key for key in tags if key.startswith(registry.TICKET_PREFIX)]  # every ticket was taken back
