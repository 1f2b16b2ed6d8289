"""Ray Tune over the project's DeepSpeed training (pipelines/tune.py, mlops/tuning): a sweep on a real 2-node
Ray cluster (two network namespaces joined by a veth pair) whose trials are 2-worker TorchTrainers, each trial
an MLflow run nested under the sweep's; a sweep killed mid-trial that the same command resumes without
retraining its finished trial (both slow); and quick checks of the settings, the best-params file, infra/ray/."""

from __future__ import annotations

import contextlib
import glob
import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pytest
import yaml
from test_training import shards, write_params  # noqa: F401  (the fixture data's train shards)

from dataops.augment import AugmentConfig
from dataops.datasets import read_coco_keypoints
from dataops.shards import ShardConfig, write_shards
from mlops.tuning.settings import TuneSettings, check_keys, search_space, trial_section, tune_metrics, tune_name
from mlops.tuning.sweep import best_trial, write_best_params
from pipelines.params import ParamsError, parse_section
from pipelines.train import TrainSection

REPO = Path(__file__).resolve().parents[1]
RAY = str(Path(sys.executable).with_name("ray"))
LINK = "tr0"  # each host's end of the veth pair
SPACE = {"train.lr": {"loguniform": [3e-4, 3e-3]}, "train.warmup_steps": {"choice": [0, 2]}}


@pytest.fixture(scope="module")
def tune_shards(shards, realdata) -> Path:  # noqa: F811
    """The train shards plus a val split of the same people (no augmentation), scored against their file."""
    ann = realdata / "coco" / "test_coco.json"
    records, report, kset = read_coco_keypoints(ann, realdata / "coco")
    config = ShardConfig(augment=AugmentConfig(enabled=False), workers=1)
    write_shards(records, kset, shards, "val", config, report, progress=False, ground_truth=ann)
    return shards


def sweep_params(tmp: Path, shard_dir: Path, realdata: Path, **tune) -> Path:
    """A params file: the tiny pretrain section of test_training (validated on val) and a tune section."""
    path = write_params(tmp, shard_dir, "base", batch=2, epochs=2)
    params = yaml.safe_load(path.read_text())
    params["pretrain"].update(validate=True, val_split="val")
    params["tune"] = {
        "stage": "pretrain",
        "name": "sweep",
        "storage_path": str(tmp / "tune"),
        "best_params_out": str(tmp / "tune" / "best_params.yaml"),
        "space": SPACE,
        "seed": 0,
        "trial_cpus": 0.1,
        **tune,
    }
    path.write_text(yaml.safe_dump(params))
    return path


@pytest.fixture
def tag():
    """A marker in the environment of every process a test starts; the finalizer kills them by pid."""
    value = uuid.uuid4().hex
    yield value
    kill_tagged(value)


@pytest.fixture
def ray_tmp(tag):
    """Ray's temp folder (short: its socket paths must stay under 108 characters), removed after the test."""
    path = tempfile.mkdtemp(prefix="rt", dir="/tmp")
    yield path
    kill_tagged(tag)
    shutil.rmtree(path, ignore_errors=True)


def kill_tagged(tag: str) -> None:
    needle = f"TRANSPOSE_TEST_TAG={tag}".encode()
    for environ in glob.glob("/proc/[0-9]*/environ"):
        pid = int(environ.split("/")[2])
        try:
            if pid != os.getpid() and needle in Path(environ).read_bytes().split(b"\0"):
                os.kill(pid, signal.SIGKILL)
        except (OSError, ValueError):
            pass  # gone already, or not ours to read


def sweep_env(tmp: Path, tag: str, ray_tmp: str) -> dict[str, str]:
    return {
        **os.environ,
        "TRANSPOSE_TEST_TAG": tag,
        "MLFLOW_TRACKING_URI": f"sqlite:///{tmp / 'mlflow.db'}",
        "RAY_TMPDIR": ray_tmp,
        "RAY_USAGE_STATS_ENABLED": "0",
        "OMP_NUM_THREADS": "1",
        "TUNE_GLOBAL_CHECKPOINT_S": "1",
        "PYTHONPATH": str(REPO),
    }


def tune_command(params: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "pipelines.tune", "--params", str(params), *extra]


def trial_statuses(experiment: Path) -> dict[str, str]:
    """Trial id -> status, from Tune's newest saved experiment state: by the start time in its name, as Tune
    picks it (a restored sweep also writes back the older files it started from)."""
    states = sorted(experiment.glob("experiment_state-*.json"))
    if not states:
        return {}
    try:
        data = json.loads(states[-1].read_text())
    except json.JSONDecodeError:  # being rewritten
        return {}
    trials = [json.loads(t[0]) for t in data["trial_data"]]
    return {t["trial_id"]: t["status"] for t in trials}


def mlflow_runs(tmp: Path) -> list:
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{tmp / 'mlflow.db'}")
    return mlflow.search_runs(experiment_names=["transpose"], output_format="list")


def check_best_params(params: Path, trial_configs: list[dict]) -> dict:
    """best_params_out is {pretrain: section}: the base section with one trial's sampled values."""
    tune = yaml.safe_load(params.read_text())["tune"]
    base = yaml.safe_load(params.read_text())["pretrain"]
    best = yaml.safe_load(Path(tune["best_params_out"]).read_text())
    assert list(best) == ["pretrain"]
    section = best["pretrain"]
    parse_section(TrainSection, section, "pretrain")  # a valid stage section
    assert {k: v for k, v in section.items() if k != "train"} == {k: v for k, v in base.items() if k != "train"}
    sampled = {f"train.{k}": section["train"][k] for k in ("lr", "warmup_steps")}
    assert sampled in trial_configs
    return section


# ---- a 2-node Ray cluster: two network namespaces joined by a veth pair ----------------------------------
def _sh(*args: str) -> None:
    subprocess.run(args, check=True, capture_output=True, text=True, timeout=60)


@pytest.fixture
def two_hosts(tag):
    """Two network namespaces, `head` (10.77.0.1) and `worker` (10.77.0.2), with a veth pair between them."""
    if os.geteuid() != 0:
        pytest.skip("a 2-node cluster on one machine needs root (network namespaces)")
    if shutil.which("ip") is None or subprocess.run(["ip", "netns", "list"], capture_output=True).returncode:
        pytest.skip("`ip netns` is not available")
    suffix = uuid.uuid4().hex[:6]
    hosts = {"head": (f"trh{suffix}", "10.77.0.1"), "worker": (f"trw{suffix}", "10.77.0.2")}
    try:
        for ns, _ in hosts.values():
            _sh("ip", "netns", "add", ns)
        _sh("ip", "link", "add", f"vh{suffix}", "type", "veth", "peer", "name", f"vw{suffix}")
        for (ns, ip), dev in zip(hosts.values(), (f"vh{suffix}", f"vw{suffix}")):
            _sh("ip", "link", "set", dev, "netns", ns)
            _sh("ip", "-n", ns, "link", "set", dev, "name", LINK)  # the same name on both hosts
            _sh("ip", "-n", ns, "addr", "add", f"{ip}/24", "dev", LINK)
            _sh("ip", "-n", ns, "link", "set", LINK, "up")
            _sh("ip", "-n", ns, "link", "set", "lo", "up")
    except subprocess.CalledProcessError as err:
        _remove_hosts(hosts, tag)
        pytest.skip(f"cannot make network namespaces here: {err.stderr.strip()}")
    yield hosts
    _remove_hosts(hosts, tag)


def _remove_hosts(hosts: dict, tag: str) -> None:
    for ns, _ in hosts.values():
        pids = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True).stdout.split()
        for pid in pids:
            with contextlib.suppress(OSError):
                os.kill(int(pid), signal.SIGKILL)
    kill_tagged(tag)
    time.sleep(0.5)
    for ns, _ in hosts.values():
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)  # takes its end of the veth pair along


def in_ns(ns: str, *command: str) -> list[str]:
    return ["ip", "netns", "exec", ns, *command]


@pytest.mark.slow
def test_sweep_on_two_node_cluster(two_hosts, tag, ray_tmp, tune_shards, realdata, tmp_path):
    (head_ns, head_ip), (worker_ns, worker_ip) = two_hosts["head"], two_hosts["worker"]
    # the hostname resolves to 127.0.0.1 here, so gloo must be told which interface reaches the other host
    env = {**sweep_env(tmp_path, tag, ray_tmp), "RAY_AUTH_MODE": "disabled", "GLOO_SOCKET_IFNAME": LINK}
    start = ["start", "--num-cpus=1", "--disable-usage-stats", "--block"]
    logs = {name: open(tmp_path / f"ray_{name}.log", "w") for name in ("head", "worker")}  # noqa: SIM115
    subprocess.Popen(
        in_ns(head_ns, RAY, *start, "--head", f"--node-ip-address={head_ip}", "--port=6390",
              "--include-dashboard=false"),
        env=env, stdout=logs["head"], stderr=subprocess.STDOUT,
    )  # fmt: skip
    wait_for_port(head_ns, head_ip, 6390)
    subprocess.Popen(
        in_ns(worker_ns, RAY, *start, f"--address={head_ip}:6390", f"--node-ip-address={worker_ip}"),
        env=env, stdout=logs["worker"], stderr=subprocess.STDOUT,
    )  # fmt: skip
    params = sweep_params(
        tmp_path, tune_shards, realdata,
        num_samples=2, max_concurrent_trials=2, workers_per_trial=2, cpus_per_worker=0.4,
        placement_strategy="SPREAD", scheduler={"type": "asha", "grace_period": 1, "reduction_factor": 2},
        metric="train/loss_epoch", mode="min",  # the tiny model's val/AP is 0 in every trial: ties never stop
    )  # fmt: skip
    wait_for_nodes(head_ns, head_ip, env, count=2)
    done = subprocess.run(
        in_ns(head_ns, *tune_command(params, "--address", f"{head_ip}:6390")),
        cwd=REPO, env=env, capture_output=True, text=True, timeout=420,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-6000:]

    experiment = tmp_path / "tune" / "sweep"
    statuses = trial_statuses(experiment)
    assert len(statuses) == 2 and set(statuses.values()) == {"TERMINATED"}, statuses
    epochs_run = {}
    for trial_id in statuses:
        out_dir = experiment / "trials" / trial_id
        latest = json.loads((out_dir / "checkpoints" / "latest.json").read_text())
        assert (out_dir / "checkpoints" / latest["tag"] / "mp_rank_00_model_states.pt").is_file()  # DeepSpeed's
        assert latest["world_size"] == 2
        workers = [json.loads((out_dir / "workers" / f"rank{r}.json").read_text()) for r in (0, 1)]
        assert {w["node_ip"] for w in workers} == {head_ip, worker_ip}, workers  # one process group, two hosts
        epochs_run[trial_id] = latest["epoch"]
    # ASHA (grace 1 epoch, max_t 2): the better trial runs both epochs; the other is stopped after one or not
    assert max(epochs_run.values()) == 2 and min(epochs_run.values()) in (1, 2), epochs_run

    runs = mlflow_runs(tmp_path)
    parents = [
        r for r in runs if r.data.tags.get("transpose.sweep") == "sweep" and "mlflow.parentRunId" not in r.data.tags
    ]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    assert sorted(r.data.tags["ray.trial_id"] for r in children) == sorted(statuses)
    assert all(r.info.status == "FINISHED" and "val_AP" in r.data.metrics for r in children)
    configs = [{k: yaml.safe_load(v) for k, v in r.data.params.items()} for r in children]
    check_best_params(params, configs)


def wait_for_port(ns: str, ip: str, port: int, timeout: float = 120) -> None:
    probe = f"import socket; socket.create_connection(('{ip}', {port}), 1)"
    deadline = time.time() + timeout
    while time.time() < deadline:
        if subprocess.run(in_ns(ns, sys.executable, "-c", probe), capture_output=True).returncode == 0:
            return
        time.sleep(1)
    raise AssertionError(f"Ray head did not listen on {ip}:{port}")


def wait_for_nodes(ns: str, ip: str, env: dict, count: int, timeout: float = 120) -> None:
    probe = (
        f"import ray; ray.init(address='{ip}:6390', logging_level='ERROR'); "
        "print(len([n for n in ray.nodes() if n['Alive']]))"
    )
    deadline = time.time() + timeout
    while time.time() < deadline:
        out = subprocess.run(in_ns(ns, sys.executable, "-c", probe), env=env, capture_output=True, text=True)
        if out.returncode == 0 and out.stdout.strip().splitlines()[-1:] == [str(count)]:
            return
        time.sleep(2)
    raise AssertionError(f"the Ray cluster did not reach {count} nodes")


# ---- restore ---------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_killed_sweep_resumes_without_rerunning_finished_trials(tag, ray_tmp, tune_shards, realdata, tmp_path):
    # one trial finishes, the next is killed mid-run: the two cases a restored sweep must tell apart
    params = sweep_params(
        tmp_path, tune_shards, realdata,
        num_samples=2, max_concurrent_trials=1, workers_per_trial=1, cpus_per_worker=1, num_cpus=2, epochs=3,
        scheduler={"type": "fifo"},
    )  # fmt: skip
    env = sweep_env(tmp_path, tag, ray_tmp)
    experiment = tmp_path / "tune" / "sweep"
    log = open(tmp_path / "first.log", "w")  # noqa: SIM115
    proc = subprocess.Popen(tune_command(params), cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)  # fmt: skip
    finished, interrupted = None, None
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None and interrupted is None:
        statuses = trial_statuses(experiment)
        done = [t for t, s in statuses.items() if s == "TERMINATED"]
        for trial_id, status in statuses.items():
            pointer = experiment / "trials" / trial_id / "checkpoints" / "latest.json"
            if done and status == "RUNNING" and pointer.is_file():
                latest = json.loads(pointer.read_text())
                if 1 <= latest["epoch"] < 3:  # mid-trial, after an epoch's checkpoint
                    os.killpg(proc.pid, signal.SIGKILL)
                    finished, interrupted = done[0], (trial_id, latest)
                    break
        time.sleep(0.2)
    proc.wait(timeout=60)
    kill_tagged(tag)  # what the killed driver's Ray left behind
    log.close()
    assert interrupted is not None, "no trial was caught mid-run: " + (tmp_path / "first.log").read_text()[-3000:]
    finished_dir = experiment / "trials" / finished
    before = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in (finished_dir / "history.json",
              finished_dir / "workers" / "rank0.json", finished_dir / "final.pth")}  # fmt: skip

    done = subprocess.run(tune_command(params), cwd=REPO, env=env, capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-6000:]
    assert "resuming sweep" in done.stdout

    statuses = trial_statuses(experiment)
    assert len(statuses) == 2 and set(statuses.values()) == {"TERMINATED"}, statuses
    for path, (mtime, content) in before.items():  # the finished trial was not trained again
        assert path.stat().st_mtime_ns == mtime and path.read_bytes() == content, path
    trial_id, latest = interrupted
    history = json.loads((experiment / "trials" / trial_id / "history.json").read_text())
    assert len(history) == 3 and history[: latest["epoch"]] == latest["history"]  # resumed, not restarted
    spans = sorted(  # from a trial's (last) worker start to its final weights: one trial at a time
        ((d / "workers" / "rank0.json").stat().st_mtime, (d / "final.pth").stat().st_mtime)
        for d in (experiment / "trials" / t for t in statuses)
    )
    assert all(end <= next_start for (_, end), (next_start, _) in itertools.pairwise(spans)), spans

    runs = mlflow_runs(tmp_path)
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert sorted(r.data.tags["ray.trial_id"] for r in children) == sorted(statuses)  # one run per trial
    assert all(r.info.status == "FINISHED" for r in children)
    configs = [{k: yaml.safe_load(v) for k, v in r.data.params.items()} for r in children]
    check_best_params(params, configs)


# ---- quick checks ----------------------------------------------------------------------------------------
def test_settings_are_checked():
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    settings = parse_section(TuneSettings, params["tune"], "tune")
    check_keys(params[settings.stage], [*settings.space, *settings.overrides], settings.stage)
    for bad, key in (
        ({"space": SPACE, "num_sample": 2}, "tune.num_sample"),  # a typo
        ({"space": SPACE, "scheduler": {"type": "hyperband"}}, "tune.scheduler.type"),
        ({"space": {"train.lr": {"loguniform": [1e-4]}}}, "tune.space"),
        ({"space": {"train.lr": [1e-4, 1e-3]}}, "tune.space"),
        ({"space": {}}, "tune.space"),
        ({"space": SPACE, "num_samples": 0}, "tune.num_samples"),
    ):
        with pytest.raises(ParamsError, match=key.replace(".", r"\.")):
            parse_section(TuneSettings, bad, "tune")
    for key in ("train.lrr", "batchsize", "loader.kind"):
        with pytest.raises(ValueError, match=key):
            check_keys(params["pretrain"], [key], "pretrain")


def test_trial_section_and_best_params(tmp_path):
    from ray import tune

    base = {"model": "m", "out_dir": "outputs/x", "metrics": "m.json", "batch_size": 32, "train": {"lr": 1e-3}}
    settings = TuneSettings(space=SPACE, epochs=3, overrides={"train.val_every_epochs": 1})
    section = trial_section(base, settings, {"train.lr": 5e-4, "batch_size": 16}, tmp_path / "t1")
    assert section["train"] == {"lr": 5e-4, "epochs": 3, "val_every_epochs": 1} and section["batch_size"] == 16
    assert section["out_dir"] == str(tmp_path / "t1") and "metrics" not in section and base["train"] == {"lr": 1e-3}
    assert section["processes"] == settings.workers_per_trial  # batch_size is per worker in a trial
    space = search_space({**SPACE, "batch_size": {"grid": [16, 32]}, "train.sigma": {"uniform": [1.5, 2.5]}})
    assert isinstance(space["train.lr"], tune.search.sample.Float) and space["batch_size"] == {"grid_search": [16, 32]}

    assert tune_name("val/AP") == "val_AP" and tune_name("AP@.5") == "AP__5"
    assert tune_metrics({"epoch": 2, "val/AP": 0.5, "flag": True, "bad": float("nan")}) == {"epoch": 2.0, "val_AP": 0.5}

    best = {"trial_id": "a_00001", "value": 0.5, "config": {"train.lr": 5e-4, "batch_size": 16}}
    path = tmp_path / "best.yaml"
    lines = write_best_params(path, base, settings, best)
    assert lines == ["--set-param pretrain.batch_size=16", "--set-param pretrain.train.lr=0.0005"]
    written = yaml.safe_load(path.read_text())
    assert written == {"pretrain": {**base, "batch_size": 16, "train": {"lr": 5e-4}}}  # the stage's, not the trial's


def test_best_trial_takes_the_best_report_of_any_trial():
    from types import SimpleNamespace

    import pandas as pd

    def result(trial_id, values, lr):
        frame = pd.DataFrame({"val_AP": values})
        return SimpleNamespace(metrics_dataframe=frame, metrics={"trial_id": trial_id}, config={"train.lr": lr})

    results = [result("t2", [0.1, 0.3], 2e-3), result("t1", [0.3, 0.2], 1e-3), result("t3", [0.05], 3e-3)]
    best = best_trial(results, TuneSettings(space=SPACE))
    assert best == {"trial_id": "t1", "value": 0.3, "config": {"train.lr": 1e-3}}  # a tie goes to the first id
    assert best_trial(results, TuneSettings(space=SPACE, mode="min"))["trial_id"] == "t3"


def test_infra_ray_files():
    from ray.autoscaler._private.util import prepare_config, validate_config

    cluster = yaml.safe_load((REPO / "infra" / "ray" / "cluster.yaml").read_text())
    validate_config(prepare_config(cluster))  # what `ray up` checks
    assert cluster["provider"]["type"] == "local"
    job = yaml.safe_load((REPO / "infra" / "ray" / "rayjob.yaml").read_text())
    assert job["kind"] == "RayJob" and "python -m pipelines.tune" in job["spec"]["entrypoint"]
    assert yaml.safe_load((REPO / "infra" / "ray" / "raycluster.yaml").read_text())["kind"] == "RayCluster"
    assert not (REPO / "infra" / "ray" / "dvc.yaml").exists()  # a sweep is no DAG stage: `dvc status` stays clean
    root = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    assert not any("pipelines.tune" in s["cmd"] for s in root.values())  # plain `dvc repro` starts no sweep
