"""Reading and registering versions of a registered model, through the MLflow client."""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from mlops.registry.records import CARD, DEFAULT_ALIAS, MODELS_URI, EvalData, RegistryError, VersionRecord

if TYPE_CHECKING:
    from mlflow import MlflowClient


def mlflow_client() -> MlflowClient:
    from mlflow import MlflowClient

    return MlflowClient()


def tracking_uri() -> str:
    import mlflow

    return mlflow.get_tracking_uri()


def missing(err: Exception) -> bool:
    return getattr(err, "error_code", "") in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND")


def _store_exceptions() -> tuple[type[BaseException], ...]:
    """What the tracking store raises: MLflow's own, and database or HTTP errors that escape it."""
    from mlflow.exceptions import MlflowException

    kinds: list[type[BaseException]] = [MlflowException]
    try:
        from sqlalchemy.exc import SQLAlchemyError

        kinds.append(SQLAlchemyError)
    except ImportError:
        pass
    try:
        from requests.exceptions import RequestException

        kinds.append(RequestException)
    except ImportError:
        pass
    return tuple(kinds)


def store_failure(what: str, err: BaseException) -> RegistryError:
    """`err` from the tracking store as a RegistryError saying what failed and what to do."""
    detail = getattr(err, "message", None) or str(err) or type(err).__name__
    code = getattr(err, "error_code", "")
    detail = str(detail).strip().splitlines()[0][:300]  # a database error's first line, without its SQL
    return RegistryError(
        f"{what}: the tracking store {tracking_uri()} failed ({code + ': ' if code else ''}{detail}). Whatever "
        "completed before it stands; rerun the command (repeating a promotion is safe), and if this persists "
        "check the tracking server and MLFLOW_TRACKING_URI"
    )


@contextmanager
def store_errors(what: str) -> Iterator[None]:
    """MLflow / database / connection errors inside the block raised as a RegistryError (see `store_failure`)."""
    try:
        yield
    except RegistryError:
        raise
    except _store_exceptions() as err:
        raise store_failure(what, err) from err


def registered_model(client: MlflowClient, name: str):
    from mlflow.exceptions import MlflowException

    try:
        return client.get_registered_model(name)
    except MlflowException as err:
        if not missing(err):
            raise
        known = sorted(m.name for m in client.search_registered_models())
        raise RegistryError(
            f"no registered model {name!r} in {tracking_uri()} (registered: {', '.join(known) or 'none'}); "
            "register one with `transpose promote --run RUN_DIR --evaluation FILE --name NAME`, or set "
            "MLFLOW_TRACKING_URI to the store that holds it"
        ) from None


def record_of(mv) -> VersionRecord:
    tags = dict(mv.tags or {})
    metrics = {k.removeprefix("metric."): float(v) for k, v in tags.items() if k.startswith("metric.")}
    evaluations: dict[str, dict[str, float]] = {}
    for key, value in tags.items():
        if key.startswith("eval."):
            _, fp16, metric = key.split(".", 2)
            evaluations.setdefault(fp16, {})[metric] = float(value)
    return VersionRecord(
        name=mv.name,
        version=str(mv.version),
        run_id=tags.get("run_id") or mv.run_id or "",
        source=mv.source,
        gate_metric=tags.get("gate.metric", ""),
        metrics=metrics,
        data=EvalData.from_tags(tags),
        evaluations=evaluations,
        card=json.loads(tags["model_card"]) if tags.get("model_card") else None,
        aliases=tuple(getattr(mv, "aliases", ()) or ()),
    )


def get_version(name: str, version: str | int, client: MlflowClient | None = None) -> VersionRecord:
    """One version of a registered model; errors name the model's versions."""
    from mlflow.exceptions import MlflowException

    client = client or mlflow_client()
    with store_errors(f"{name}: reading version {version}"):
        registered_model(client, name)
        try:
            return record_of(client.get_model_version(name, str(version)))
        except MlflowException as err:
            if not missing(err):
                raise
            versions = sorted(int(mv.version) for mv in client.search_model_versions(f"name='{name}'"))
            raise RegistryError(f"{name} has no version {version} (versions: {versions or 'none'})") from None


def champion(name: str, alias: str = DEFAULT_ALIAS, client: MlflowClient | None = None) -> VersionRecord | None:
    """The version holding `alias`, or None when no version holds it yet."""
    from mlflow.exceptions import MlflowException

    client = client or mlflow_client()
    with store_errors(f"{name}@{alias}: reading the alias"):
        model = registered_model(client, name)
        if alias not in (model.aliases or {}):
            return None
        try:
            return record_of(client.get_model_version_by_alias(name, alias))
        except MlflowException as err:
            if missing(err):
                return None
            raise


def resolve(uri: str, client: MlflowClient | None = None) -> VersionRecord:
    """The version `models:/NAME@ALIAS` or `models:/NAME/VERSION` points to."""
    match = MODELS_URI.fullmatch(uri)
    if not match:
        raise RegistryError(f"{uri!r} is not a registered model URI: expected models:/NAME@ALIAS or models:/NAME/N")
    client = client or mlflow_client()
    name, alias = match["name"], match["alias"]
    if alias is None:
        return get_version(name, match["version"], client)
    held = champion(name, alias, client)
    if held is None:
        with store_errors(f"{uri}: reading the aliases"):
            aliases = sorted(registered_model(client, name).aliases or {})
        raise RegistryError(
            f"{name} has no alias {alias!r} (aliases: {', '.join(aliases) or 'none'}); promote a version first: "
            f"`transpose promote --name {name} --version N --alias {alias}`"
        )
    return held


def download(run_id: str, artifact: str, dst: Path) -> Path | None:
    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        return Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=artifact, dst_path=str(dst)))
    except (MlflowException, OSError):
        return None


def run_card(run_id: str) -> dict | None:
    """The model card (model.json) logged with a training run, if it logged one."""
    with tempfile.TemporaryDirectory() as tmp:
        path = download(run_id, CARD, Path(tmp))
        return json.loads(path.read_text()) if path and path.is_file() else None


def _same_registration(record: VersionRecord, run_id: str, metrics: Mapping[str, float], data: EvalData) -> bool:
    return (
        record.run_id == run_id
        and record.data is not None
        and record.data.fingerprint == data.fingerprint
        and record.metrics == numeric(metrics)
    )


def numeric(metrics: Mapping) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def register(
    name: str,
    model_uri: str,
    run_id: str,
    metrics: Mapping[str, float],
    gate_metric: str,
    data: EvalData,
    card: dict | None = None,
) -> VersionRecord:
    """A new version of `name` from a logged model, tagged with its metrics on `data` (reused when the same run
    with the same scores on the same data is already registered)."""
    import mlflow

    if gate_metric not in metrics:
        raise RegistryError(f"metrics have no {gate_metric!r} (have: {', '.join(sorted(metrics))})")
    client = mlflow_client()
    with store_errors(f"{name}: registering {model_uri} (run {run_id})"):
        for mv in client.search_model_versions(f"name='{name}'"):
            record = record_of(mv)
            if _same_registration(record, run_id, metrics, data):
                return record
        tags = {f"metric.{k}": repr(v) for k, v in numeric(metrics).items()}
        tags.update(data.tags())
        tags.update({"gate.metric": gate_metric, "run_id": run_id})
        card = card if card is not None else run_card(run_id)
        if card is not None:
            tags["model_card"] = json.dumps(card, sort_keys=True)
        mv = mlflow.register_model(model_uri, name, tags=tags)
        client.update_model_version(name, mv.version, description=describe(card, metrics, gate_metric, data))
    return get_version(name, mv.version, client)


def describe(card: dict | None, metrics: Mapping[str, float], gate_metric: str, data: EvalData) -> str:
    """The version's description: what the model is, what it was trained on, and how it scored on what."""
    lines = []
    if card:
        h, w = card.get("image_size", ("?", "?"))
        keypoints = card.get("keypoints", {})
        lines.append(
            f"{card.get('model')} at {h}x{w}, {card.get('num_keypoints')} keypoints ({keypoints.get('name', '?')})"
        )
        training = card.get("training") or {}
        if training:
            origin = f", started from {training['init_from']}" if training.get("init_from") else ""
            lines.append(f"trained by stage {training.get('stage', '?')} on {training.get('shards', '?')}{origin}")
    scores = ", ".join(f"{k}={v:.4f}" for k, v in numeric(metrics).items())
    lines.append(f"gate {gate_metric}; on {data.dataset} {data.split} ({data.annotations}): {scores}")
    return "\n".join(lines)


def attach_file(
    record: VersionRecord, path: str | Path, folder: str, tag: str, facts: Mapping[str, str] | None = None
) -> str:
    """Log `path` to the version's training run under `folder` and point the version at it: tags `TAG.uri`
    (runs:/RUN/FOLDER/NAME), `TAG.sha256`, and `TAG.<fact>` for each fact. Returns the URI."""
    from mlops.fingerprints import file_sha256

    path = Path(path)
    client = mlflow_client()
    uri = f"runs:/{record.run_id}/{folder}/{path.name}"
    with store_errors(f"{record.uri}: attaching {path}"):
        client.log_artifact(record.run_id, str(path), folder)
        tags = {f"{tag}.uri": uri, f"{tag}.sha256": file_sha256(path)}
        tags.update({f"{tag}.{k}": v for k, v in (facts or {}).items()})
        for key, value in tags.items():
            client.set_model_version_tag(record.name, record.version, key, value)
    return uri
