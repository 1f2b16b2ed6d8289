"""Model registry and promotion against a real MLflow (sqlite store in a temp folder, no server)."""

from __future__ import annotations

import json
import multiprocessing
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

mlflow = pytest.importorskip("mlflow")

from mlops import registry  # noqa: E402
from mlops.registry import EvalData, RegistryError, load_registered_model, promote  # noqa: E402
from mlops.serving.packaging import log_serving_model  # noqa: E402
from transpose.keypoints import COCO  # noqa: E402
from transpose.models import ModelCard  # noqa: E402

IMAGE_SIZE = (128, 96)


@dataclass(frozen=True)
class Store:
    root: Path
    model_uri: str  # the one logged (torch.export) model, of run_a
    run_a: str  # best.pth + model.json of model_a, and the logged model
    run_b: str  # best.pth + model.json of model_b only
    model_a: torch.nn.Module
    model_b: torch.nn.Module


def _tiny(seed: int) -> torch.nn.Module:
    from transpose.models import create_model

    torch.manual_seed(seed)
    return create_model("transpose_r_tiny", num_keypoints=17, image_size=IMAGE_SIZE).eval()


def _log_run(model: torch.nn.Module, folder: Path, experiment_id: str, log_model: bool) -> tuple[str, str]:
    """A training-like run: best.pth + model.json artifacts, and optionally the exported model."""
    folder.mkdir(parents=True)
    torch.save(model.state_dict(), folder / "best.pth")
    ModelCard("transpose_r_tiny", IMAGE_SIZE, COCO, "coco").write(folder / "model.json")
    with mlflow.start_run(experiment_id=experiment_id) as run:
        mlflow.log_artifact(str(folder / "best.pth"))
        mlflow.log_artifact(str(folder / "model.json"))
        uri = ""
        if log_model:  # the model the train stage logs: the serving pyfunc with the pytorch flavour
            uri = log_serving_model(folder).model_uri
    return run.info.run_id, uri


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Store:
    root = tmp_path_factory.mktemp("mlflow")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root}/mlflow.db")
        mp.delenv(registry.LOCK_ENV, raising=False)
        mlflow.set_tracking_uri(f"sqlite:///{root}/mlflow.db")
        experiment = mlflow.create_experiment("registry-test", artifact_location=(root / "artifacts").as_uri())
        model_a, model_b = _tiny(1), _tiny(2)
        run_a, uri = _log_run(model_a, root / "a", experiment, log_model=True)
        run_b, _ = _log_run(model_b, root / "b", experiment, log_model=False)
        yield Store(root, uri, run_a, run_b, model_a, model_b)


def _data(root: Path, tag: str, seed: int) -> EvalData:
    """An evaluation split: an annotation file (the seed of its inputs) and a shard manifest."""
    folder = root / f"data-{tag}"
    (folder / "shards").mkdir(parents=True, exist_ok=True)
    (folder / "ann.json").write_text(json.dumps({"seed": seed}))
    (folder / "shards" / "val-manifest.json").write_text(json.dumps({"split": "val", "tag": tag}))
    return EvalData.from_files("coco", "val", folder / "ann.json", folder / "shards")


def _register(store: Store, name: str, value: float, data: EvalData, run_id: str | None = None) -> str:
    metrics = {"AP": value, "AR": value + 0.1}
    return registry.register(name, store.model_uri, run_id or store.run_a, metrics, "AP", data).version


def heat_score(model: torch.nn.Module, data: EvalData) -> dict[str, float]:
    """A small real metric: the mean peak heatmap response on the split's inputs."""
    seed = json.loads(Path(data.annotations).read_text())["seed"]
    x = torch.randn(2, 3, *IMAGE_SIZE, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return {"AP": float(model(x).amax(dim=(2, 3)).mean())}


def _champion(name: str) -> str:
    return registry.champion(name).version


def test_better_takes_the_alias_worse_and_equal_do_not(store):
    data = _data(store.root, "a", 0)
    name = "t-order"
    versions = [_register(store, name, v, data) for v in (0.5, 0.4, 0.5, 0.6)]
    decisions = [promote(name, v) for v in versions]
    assert [d.moved for d in decisions] == [True, False, False, True]
    assert _champion(name) == versions[3]
    past = registry.history(name)
    assert [d.seq for d in past] == [1, 2, 3, 4]
    assert [(d.candidate, d.candidate_value, d.holder, d.holder_value) for d in past] == [
        (versions[0], 0.5, None, None),
        (versions[1], 0.4, versions[0], 0.5),
        (versions[2], 0.5, versions[0], 0.5),
        (versions[3], 0.6, versions[0], 0.5),
    ]
    assert all(d.metric == "AP" and d.fingerprint == data.fingerprint for d in past)
    # the same run, scores and data register once; another metric than the gate can be asked for
    assert _register(store, name, 0.6, data) == versions[3]
    assert promote(name, versions[1], metric="AR").moved is False
    with pytest.raises(RegistryError, match="no metric 'PCKh'"):
        promote(name, versions[1], metric="PCKh")


def test_champion_loads_back_as_transpose_through_the_card_and_the_pytorch_flavour(store):
    name = "t-load"
    version = _register(store, name, 0.5, _data(store.root, "a", 0))
    promote(name, version)
    x = torch.randn(2, 3, *IMAGE_SIZE)
    with torch.no_grad():
        expected = store.model_a(x)
        model, card = load_registered_model(f"models:/{name}@champion")
        assert type(model) is type(store.model_a) and not model.training
        assert card.keypoints == COCO and tuple(card.image_size) == IMAGE_SIZE  # the run's model card
        torch.testing.assert_close(model(x), expected)
        assert hasattr(model, "global_encoder")  # the real module (attention for explain), not a GraphModule
        module = mlflow.pytorch.load_model(f"models:/{name}@champion")  # the real module too, at any size
        torch.testing.assert_close(module.eval()(x[:1]), expected[:1])
        assert module(torch.randn(3, 3, 160, 128)).shape == (3, 17, 40, 32)
    torch.testing.assert_close(load_registered_model(f"models:/{name}/{version}")[0](x), expected)
    with pytest.raises(RegistryError, match="no registered model 'nope'.*registered: .*t-load"):
        load_registered_model("models:/nope@champion")
    with pytest.raises(RegistryError, match="no alias 'staging'.*aliases: champion"):
        load_registered_model(f"models:/{name}@staging")
    with pytest.raises(RegistryError, match="has no version 99"):
        load_registered_model(f"models:/{name}/99")


def test_holder_on_other_data_is_re_evaluated_or_the_promotion_refused(store):
    name = "t-data"
    old, new = _data(store.root, "old", 0), _data(store.root, "new", 5)
    assert old.fingerprint != new.fingerprint
    holder = _register(store, name, heat_score(store.model_a, old)["AP"], old, store.run_a)
    promote(name, holder)
    cand_value = heat_score(store.model_b, new)["AP"]
    candidate = _register(store, name, cand_value, new, store.run_b)

    refused = promote(name, candidate)
    assert refused.refused and not refused.moved and "evaluated on other data" in refused.reason
    assert _champion(name) == holder

    calls = []

    def evaluate(version: registry.VersionRecord, data: EvalData) -> dict[str, float]:
        calls.append((version.version, data.fingerprint))
        return heat_score(load_registered_model(version.uri)[0], data)

    decision = promote(name, candidate, evaluate=evaluate)
    holder_on_new = heat_score(store.model_a, new)["AP"]
    assert calls == [(holder, new.fingerprint)]
    assert decision.holder_value == pytest.approx(holder_on_new, rel=1e-6)
    assert decision.moved == (cand_value > holder_on_new)
    assert _champion(name) == (candidate if decision.moved else holder)
    # the re-evaluation is kept on the holder: a later candidate on the same data needs no callable
    assert registry.get_version(name, holder).value_on("AP", new) == pytest.approx(holder_on_new, rel=1e-6)
    if not decision.moved:
        later = _register(store, name, holder_on_new + 1.0, new, store.run_b)
        assert promote(name, later).moved
    assert [d.refused for d in registry.history(name)][:2] == [False, True]


def _promote_worker(name: str, version: str, barrier, lock: Path) -> None:
    barrier.wait(timeout=120)
    promote(name, version, lock=lock)


def test_concurrent_promotions_leave_the_best(store, tmp_path):
    """Each promoter with its own lock file, as on separate machines: the registry's turn alone serialises them."""
    data = _data(store.root, "a", 0)
    name = "t-race"
    holder = _register(store, name, 0.4, data)
    promote(name, holder)
    values = (0.3, 0.7, 0.5, 0.6)
    versions = [_register(store, name, v, data) for v in values]
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(len(versions))
    workers = [
        ctx.Process(target=_promote_worker, args=(name, v, barrier, tmp_path / f"machine-{i}.lock"))
        for i, v in enumerate(versions)
    ]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=240)
    assert [w.exitcode for w in workers] == [0] * len(workers)
    assert _champion(name) == versions[values.index(0.7)]
    past = registry.history(name)
    assert [d.seq for d in past] == list(range(1, len(values) + 2))
    assert sorted(d.candidate for d in past[1:]) == sorted(versions)
    value_of, current = dict(zip([holder, *versions], [0.4, *values])), holder
    for d in past[1:]:  # each decided against the holder of its moment
        assert d.holder == current and d.moved == (value_of[d.candidate] > value_of[current]), d
        current = d.candidate if d.moved else current
    assert not any(d.reason.startswith("repair") for d in past)
    assert _ticket_ids(name) == []


def test_alias_left_on_a_worse_model_is_repaired(store):
    data = _data(store.root, "a", 0)
    name = "t-repair"
    best, worse, later = (_register(store, name, v, data) for v in (0.7, 0.5, 0.3))
    promote(name, best)
    mlflow.MlflowClient().set_registered_model_alias(name, "champion", worse)  # a lock-less writer won a race
    decision = promote(name, later)
    assert not decision.moved and decision.holder == worse
    assert _champion(name) == best
    repair = registry.history(name)[-1]
    assert repair.moved and repair.reason.startswith("repair") and (repair.candidate, repair.holder) == (best, worse)


def test_cli_registers_promotes_and_prints_the_history(store, tmp_path, capsys, monkeypatch):
    from cli.main import main
    from pipelines import promote as stage

    data = _data(store.root, "a", 0)
    run = tmp_path / "run"
    run.mkdir()
    (run / "mlflow_run.json").write_text(json.dumps({"run_id": store.run_a, "model_uri": store.model_uri,
                                                     "tracking_uri": "unused"}))  # fmt: skip
    ModelCard("transpose_r_tiny", IMAGE_SIZE, COCO, "coco").write(run / "model.json")
    evaluation = tmp_path / "pretrain_evaluation.json"  # as the evaluation stage writes it
    where = {"shards": data.shards, "split": "val", "ground_truth": data.annotations, "fingerprint": data.fingerprint}
    evaluation.write_text(json.dumps({
        "run": str(run), "dataset_kind": "coco", "gate_metric": "AP", "metrics": {"AP": 0.25, "AR": 0.3}, "data": where,
    }))  # fmt: skip
    register = ["promote", "--run", str(run), "--evaluation", str(evaluation), "--name", "t-cli"]
    assert main(register) == 0
    version = registry.get_version("t-cli", 1)
    assert version.card["keypoints"]["names"] == list(COCO.names) and version.data.fingerprint == data.fingerprint
    assert main(["promote", "--name", "t-cli", "--version", "1"]) == 0
    assert main(["promote", "--history", "t-cli"]) == 0
    table = capsys.readouterr().out.splitlines()[-3:]
    assert table[0].split()[:4] == ["#", "when", "(UTC)", "alias"] and "moved" in table[0]
    assert table[1].split()[4:9] == ["v1", "0.2500", "-", "-", "yes"]
    assert table[2].split()[4:9] == ["v1", "0.2500", "v1", "0.2500", "no"]
    assert main(["promote", "--history", "t-nope"]) == 2
    assert "no registered model 't-nope'" in capsys.readouterr().err
    assert main(["promote", "--name", "t-cli", "--version", "1", "--metric", "PCKh"]) == 2
    assert "no metric 'PCKh'" in capsys.readouterr().err
    assert main(["promote", "--name", "t-cli", "--run", str(run)]) == 2
    assert "--run needs --evaluation" in capsys.readouterr().err

    # the DVC stage: one model registered and promoted, one skipped (trained with --no-mlflow)
    skipped = tmp_path / "untracked_run"
    ModelCard("transpose_r_tiny", IMAGE_SIZE, COCO, "coco").write(skipped / "model.json")
    section = {"alias": "champion", "decisions": str(tmp_path / "decisions.json"), "models": {
        "t-stage": {"run": str(run), "evaluation": str(evaluation)},
        "t-skip": {"run": str(skipped), "evaluation": str(evaluation)},
    }}  # fmt: skip
    (tmp_path / "params.yaml").write_text(json.dumps({"promote": section}))
    monkeypatch.setattr("sys.argv", ["promote", "--params", str(tmp_path / "params.yaml"), "--no-mlflow"])
    with pytest.raises(SystemExit, match=r"t-stage.run .*: no best.pth there to export to ONNX"):
        stage.main()  # ONNX exports are on by default, and this run has only a logged model
    assert mlflow.MlflowClient().search_model_versions("name='t-stage'") == []  # nothing registered yet
    section["onnx_dir"] = ""  # exports are tested in test_serving
    (tmp_path / "params.yaml").write_text(json.dumps({"promote": section}))
    stage.main()
    report = json.loads((tmp_path / "decisions.json").read_text())["models"]
    assert report["t-stage"]["moved"] and report["t-stage"]["candidate_value"] == 0.25
    assert "--no-mlflow" in report["t-skip"]["skipped"]
    section["models"]["t-stage"]["evaluation"] = str(tmp_path / "absent.json")
    (tmp_path / "params.yaml").write_text(json.dumps({"promote": section}))
    with pytest.raises(SystemExit, match="absent.json is missing: run the evaluation stage"):
        stage.main()


def test_lock_beside_the_store_or_where_told(monkeypatch, tmp_path):
    monkeypatch.delenv(registry.LOCK_ENV, raising=False)
    assert registry.lock_path("sqlite:////srv/ml/mlflow.db") == Path("/srv/ml/mlflow.db.promote.lock")
    assert registry.lock_path("file:///srv/mlruns") == Path("/srv/mlruns/promote.lock")
    assert registry.lock_path("http://mlflow:5000").name.startswith("transpose-promote-")
    monkeypatch.setenv(registry.LOCK_ENV, str(tmp_path / "shared.lock"))
    assert registry.lock_path("http://mlflow:5000") == tmp_path / "shared.lock"


def _foreign_ticket(name: str, expires_in: float, number: int = 1) -> registry.Ticket:
    """A ticket another promoter (another machine) holds on `name`."""
    now = time.time()
    ticket = registry.Ticket("f" * 32, number, "ci@other-machine pid 4242", "champion", now - 5, now + expires_in)
    mlflow.MlflowClient().set_registered_model_tag(name, ticket.key, ticket.value())
    return ticket


def _ticket_ids(name: str) -> list[str]:
    return [t.id for t in registry.tickets(mlflow.MlflowClient(), name)]


def test_a_held_turn_refuses_after_the_wait_naming_the_holder(store, capsys):
    from cli.main import main

    data = _data(store.root, "a", 0)
    name = "t-busy"
    holder, candidate = (_register(store, name, v, data) for v in (0.4, 0.6))
    promote(name, holder)
    ticket = _foreign_ticket(name, expires_in=60)
    started = time.monotonic()
    busy = r"ci@other-machine pid 4242 \(.*number 1, .*lease until 20\d\d-.*\) holds the promotion turn.*waiting 1s"
    with pytest.raises(registry.PromotionBusy, match=busy):
        promote(name, candidate, wait=1.0)
    assert time.monotonic() - started < 10
    assert _champion(name) == holder and len(registry.history(name)) == 1  # nothing decided
    assert _ticket_ids(name) == [ticket.id]  # this promoter took its own ticket back
    capsys.readouterr()
    assert main(["promote", "--name", name, "--version", candidate, "--wait", "0.5"]) == 3
    err = capsys.readouterr().err
    assert err.startswith("error: t-busy@champion: ci@other-machine") and "Traceback" not in err

    # the holder died: once its lease has run out its ticket no longer blocks anyone
    _foreign_ticket(name, expires_in=-1)
    decision = promote(name, candidate, wait=5.0)
    assert decision.moved and decision.seq == 2 and _champion(name) == candidate


def test_a_promoter_whose_lease_lapsed_stops_before_writing(store, monkeypatch):
    from mlflow.exceptions import MlflowException

    data = _data(store.root, "a", 0)
    name = "t-lapse"
    _register(store, name, 0.4, data)
    client = mlflow.MlflowClient()
    with registry.registry_turn(client, name, "champion", lease=0.6, wait=5) as turn:
        turn.check()  # held
        assert len(_ticket_ids(name)) == 1

        def unreachable(*args, **kwargs):
            raise MlflowException("connection refused", error_code="TEMPORARILY_UNAVAILABLE")

        monkeypatch.setattr(client, "set_registered_model_tag", unreachable)  # renewals fail from now on
        time.sleep(0.6)
        with pytest.raises(RegistryError, match="t-lapse@champion: this promoter lost its promotion turn"):
            turn.check()
    assert _ticket_ids(name) == []  # taken back all the same


def test_a_writer_outside_the_turn_cannot_share_a_decision_number(store, monkeypatch):
    """An older promoter (no tickets) writes decision #2 at the same moment: this one takes #3."""
    from mlflow import MlflowClient

    data = _data(store.root, "a", 0)
    name = "t-legacy"
    first, second, legacy = (_register(store, name, v, data) for v in (0.4, 0.6, 0.5))
    promote(name, first)
    real = MlflowClient.set_registered_model_tag

    def racing(self, model, key, value):
        if key.startswith("promotion.000002-") and not key.endswith(f"-v{legacy}"):
            stale = {**json.loads(value), "candidate": legacy, "candidate_value": 0.5, "moved": False}
            real(self, model, f"promotion.000002-v{legacy}", json.dumps(stale))
        return real(self, model, key, value)

    monkeypatch.setattr(MlflowClient, "set_registered_model_tag", racing)
    decision = promote(name, second)
    assert decision.seq == 3 and decision.moved
    past = registry.history(name)
    assert [(d.seq, d.candidate) for d in past] == [(1, first), (2, legacy), (3, second)]


def test_store_errors_name_the_model_and_what_to_do(store, monkeypatch, capsys):
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    from cli.main import main

    data = _data(store.root, "a", 0)
    name = "t-dberror"
    version = _register(store, name, 0.4, data)

    def integrity(*args, **kwargs):  # what a lock-less concurrent writer made sqlite say (issue probe)
        raise MlflowException(
            "(sqlite3.IntegrityError) UNIQUE constraint failed: registered_model_aliases.name\n"
            "[SQL: INSERT INTO registered_model_aliases (alias, version, name) VALUES (?, ?, ?)]",
            error_code="BAD_REQUEST",
        )

    monkeypatch.setattr(MlflowClient, "set_registered_model_alias", integrity)
    with pytest.raises(RegistryError) as caught:
        promote(name, version)
    message = str(caught.value)
    assert message.startswith(f"t-dberror@champion: promoting v{version}: the tracking store sqlite:///")
    assert "IntegrityError" in message and "[SQL" not in message and "rerun" in message
    assert _ticket_ids(name) == [] and registry.champion(name) is None
    capsys.readouterr()
    assert main(["promote", "--name", name, "--version", version]) == 2
    assert capsys.readouterr().err.startswith("error: t-dberror@champion: promoting")
