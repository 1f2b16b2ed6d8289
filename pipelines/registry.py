"""The MLflow model registry: register trained models with their gate metrics, promote the better one.

Registering (`register`) makes a new version of a registered model (e.g. `transpose-coco`) from a stage's logged
model URI, with version tags:

    gate.metric        the gate metric's name (COCO `AP`, MPII `PCKh`)
    metric.<NAME>      every metric of the model on the gate split (metric.AP = 0.7193, ...)
    data.dataset, data.split, data.annotations, data.shards
    data.fingerprint   sha256 over the annotation file and the split's shard manifest(s): "the same data"
    run_id             the training run holding best.pth and model.json
    model_card         model.json's content (enough to rebuild the architecture)
    eval.<FP16>.<NAME> the model's metrics re-evaluated on other data (FP16: that data's fingerprint[:16])

Promoting (`promote`) moves an alias (default `champion`) to a candidate version only when its gate metric is
strictly greater than the holder's on the same data. When the holder was evaluated on other data it is
re-evaluated on the candidate's data through the `evaluate` callable; without one the promotion is refused.
Every decision, moved or not, is kept as a registered-model tag `promotion.NNNNNN-vV` (NNNNNN: its number, V:
the candidate version; JSON: time, candidate, holder, both figures, metric, fingerprint, moved, reason), since
MLflow keeps no history of alias moves (mlflow/mlflow#2169); `history(name)` reads them back in order. Being
tags, they live in the tracking store itself and work the same with a remote tracking server.

Concurrency: read holder, compare, set alias and record run under an exclusive fcntl lock. Its file is
`TRANSPOSE_PROMOTE_LOCK` when set, else beside the store (`<db>.promote.lock` for `sqlite:///<db>`,
`<dir>/promote.lock` for a file store). After setting, the champion is checked against the best version the
recorded decisions moved the alias to on the same data since the data last changed, and put back if worse.

Limitation, remote tracking servers (http[s]://, databricks): MLflow has no compare-and-set for aliases, so
the lock protects only promoters that share its file. Set TRANSPOSE_PROMOTE_LOCK to a path on a filesystem
every promoter mounts (with working fcntl locks, e.g. NFSv4); otherwise the lock falls back to a file in the
machine's temp folder, which serialises promotions on one machine only. Promoters on different machines
without a shared lock can then interleave: the after-set check puts an alias left on a worse model back as
soon as either promoter's record is visible to the other, but a window remains where `@champion` resolves to
the worse model, and two decisions can share a number (the `-vV` suffix keeps both records unless both
promote the same version).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import tempfile
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlparse

if TYPE_CHECKING:
    import torch
    from mlflow import MlflowClient

GATE_METRICS = {"coco": "AP", "mpii": "PCKh"}
DEFAULT_ALIAS = "champion"
LOCK_ENV = "TRANSPOSE_PROMOTE_LOCK"
HISTORY_PREFIX = "promotion."
CHECKPOINT, CARD = "best.pth", "model.json"
_MODELS_URI = re.compile(r"models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/@]+)|/(?P<version>\d+))/?")


class RegistryError(ValueError):
    """A registry request that cannot be served; the message says what to fix."""


@dataclass(frozen=True)
class EvalData:
    """The data a gate metric was computed on, with its fingerprint."""

    dataset: str
    split: str
    annotations: str
    shards: str
    fingerprint: str

    @classmethod
    def from_files(cls, dataset: str, split: str, annotations: str | Path, shards: str | Path) -> EvalData:
        """Fingerprint the annotation file and the split's shard manifest(s) as they are now."""
        files = [Path(annotations), *split_manifests(shards, split)]
        return cls(dataset, split, str(annotations), str(shards), data_fingerprint(files))

    def tags(self) -> dict[str, str]:
        return {f"data.{key}": value for key, value in asdict(self).items()}

    @classmethod
    def from_tags(cls, tags: Mapping[str, str]) -> EvalData | None:
        if "data.fingerprint" not in tags:
            return None
        return cls(**{key: tags.get(f"data.{key}", "") for key in cls.__dataclass_fields__})


@dataclass(frozen=True)
class VersionRecord:
    """A registered model version as this module tagged it."""

    name: str
    version: str
    run_id: str
    source: str
    gate_metric: str
    metrics: dict[str, float]
    data: EvalData | None
    evaluations: dict[str, dict[str, float]] = field(default_factory=dict)  # fingerprint[:16] -> metrics
    card: dict | None = None
    aliases: tuple[str, ...] = ()

    @property
    def uri(self) -> str:
        return f"models:/{self.name}/{self.version}"

    def value_on(self, metric: str, data: EvalData | None) -> float | None:
        """This version's `metric` on `data` (its own scores or a recorded re-evaluation), if known."""
        if data is None:
            return None
        if self.data is not None and self.data.fingerprint == data.fingerprint:
            return self.metrics.get(metric)
        return self.evaluations.get(data.fingerprint[:16], {}).get(metric)


@dataclass(frozen=True)
class Decision:
    """One promotion attempt: both figures on the candidate's data, and whether the alias moved."""

    time: str
    alias: str
    metric: str
    candidate: str
    candidate_value: float
    holder: str | None
    holder_value: float | None
    fingerprint: str
    moved: bool
    reason: str
    seq: int = 0

    @property
    def refused(self) -> bool:
        return self.reason.startswith("refused")


Evaluate = Callable[[VersionRecord, EvalData], Mapping[str, float]]


# -- fingerprints ---------------------------------------------------------------------------------------------


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def data_fingerprint(files: list[Path]) -> str:
    """sha256 over the files' own sha256 digests, in order (contents only: moving the folder keeps it)."""
    digest = hashlib.sha256()
    for path in files:
        if not path.is_file():
            raise FileNotFoundError(f"{path}: evaluation data to fingerprint is missing")
        digest.update(file_sha256(path).encode())
    return digest.hexdigest()


def split_manifests(shards: str | Path, split: str) -> list[Path]:
    found = sorted(Path(shards).glob(f"{split}-manifest*.json"))
    if not found:
        raise FileNotFoundError(
            f"no shard manifest {Path(shards) / f'{split}-manifest.json'}: run the shard stage, or fix the shards "
            "folder / split"
        )
    return found


# -- the client, reading versions ------------------------------------------------------------------------------


def _client() -> MlflowClient:
    from mlflow import MlflowClient

    return MlflowClient()


def _tracking_uri() -> str:
    import mlflow

    return mlflow.get_tracking_uri()


def _missing(err: Exception) -> bool:
    return getattr(err, "error_code", "") in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND")


def _registered_model(client: MlflowClient, name: str):
    from mlflow.exceptions import MlflowException

    try:
        return client.get_registered_model(name)
    except MlflowException as err:
        if not _missing(err):
            raise
        known = sorted(m.name for m in client.search_registered_models())
        raise RegistryError(
            f"no registered model {name!r} in {_tracking_uri()} (registered: {', '.join(known) or 'none'}); "
            "register one with `transpose promote --run-info ... --metrics ... --name NAME`, or set "
            "MLFLOW_TRACKING_URI to the store that holds it"
        ) from None


def _record_of(mv) -> VersionRecord:
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

    client = client or _client()
    _registered_model(client, name)
    try:
        return _record_of(client.get_model_version(name, str(version)))
    except MlflowException as err:
        if not _missing(err):
            raise
        versions = sorted(int(mv.version) for mv in client.search_model_versions(f"name='{name}'"))
        raise RegistryError(f"{name} has no version {version} (versions: {versions or 'none'})") from None


def champion(name: str, alias: str = DEFAULT_ALIAS, client: MlflowClient | None = None) -> VersionRecord | None:
    """The version holding `alias`, or None when no version holds it yet."""
    from mlflow.exceptions import MlflowException

    client = client or _client()
    model = _registered_model(client, name)
    if alias not in (model.aliases or {}):
        return None
    try:
        return _record_of(client.get_model_version_by_alias(name, alias))
    except MlflowException as err:
        if _missing(err):
            return None
        raise


def resolve(uri: str, client: MlflowClient | None = None) -> VersionRecord:
    """The version `models:/NAME@ALIAS` or `models:/NAME/VERSION` points to."""
    match = _MODELS_URI.fullmatch(uri)
    if not match:
        raise RegistryError(f"{uri!r} is not a registered model URI: expected models:/NAME@ALIAS or models:/NAME/N")
    client = client or _client()
    name, alias = match["name"], match["alias"]
    if alias is None:
        return get_version(name, match["version"], client)
    held = champion(name, alias, client)
    if held is None:
        aliases = sorted(_registered_model(client, name).aliases or {})
        raise RegistryError(
            f"{name} has no alias {alias!r} (aliases: {', '.join(aliases) or 'none'}); promote a version first: "
            f"`transpose promote --name {name} --version N --alias {alias}`"
        )
    return held


# -- registering ---------------------------------------------------------------------------------------------


def _download(run_id: str, artifact: str, dst: Path) -> Path | None:
    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        return Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=artifact, dst_path=str(dst)))
    except (MlflowException, OSError):
        return None


def run_card(run_id: str) -> dict | None:
    """The model card (model.json) logged with a training run, if it logged one."""
    with tempfile.TemporaryDirectory() as tmp:
        path = _download(run_id, CARD, Path(tmp))
        return json.loads(path.read_text()) if path and path.is_file() else None


def _same_registration(record: VersionRecord, run_id: str, metrics: Mapping[str, float], data: EvalData) -> bool:
    return (
        record.run_id == run_id
        and record.data is not None
        and record.data.fingerprint == data.fingerprint
        and record.metrics == _numeric(metrics)
    )


def _numeric(metrics: Mapping) -> dict[str, float]:
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
    client = _client()
    for mv in client.search_model_versions(f"name='{name}'"):
        record = _record_of(mv)
        if _same_registration(record, run_id, metrics, data):
            return record
    tags = {f"metric.{k}": repr(v) for k, v in _numeric(metrics).items()}
    tags.update(data.tags())
    tags.update({"gate.metric": gate_metric, "run_id": run_id})
    card = card if card is not None else run_card(run_id)
    if card is not None:
        tags["model_card"] = json.dumps(card, sort_keys=True)
    mv = mlflow.register_model(model_uri, name, tags=tags)
    return get_version(name, mv.version, client)


# -- the lock ------------------------------------------------------------------------------------------------


def lock_path(tracking_uri: str) -> Path:
    """TRANSPOSE_PROMOTE_LOCK, else a file beside a local store, else one in this machine's temp folder."""
    if os.environ.get(LOCK_ENV):
        return Path(os.environ[LOCK_ENV])
    parsed = urlparse(tracking_uri)
    if parsed.scheme == "sqlite":
        db = tracking_uri.removeprefix("sqlite:///").split("?", 1)[0]
        return Path(db).with_name(Path(db).name + ".promote.lock")
    if parsed.scheme in ("", "file"):
        return Path(parsed.path if parsed.scheme else tracking_uri) / "promote.lock"
    digest = hashlib.sha256(tracking_uri.encode()).hexdigest()[:12]
    return Path(tempfile.gettempdir()) / f"transpose-promote-{digest}.lock"


@contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive fcntl lock on `path` (created if needed), held for the block."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


# -- history -------------------------------------------------------------------------------------------------


def history(name: str, client: MlflowClient | None = None) -> list[Decision]:
    """Every promotion decision recorded for `name`, oldest first."""
    client = client or _client()
    tags = _registered_model(client, name).tags or {}
    decisions = []
    for key, value in tags.items():
        number = key.removeprefix(HISTORY_PREFIX).split("-", 1)[0]
        if key.startswith(HISTORY_PREFIX) and number.isdigit():
            data = {**json.loads(value), "seq": int(number)}
            decisions.append(Decision(**{k: data.get(k) for k in Decision.__dataclass_fields__}))
    return sorted(decisions, key=lambda d: (d.seq, d.time))


def _record(client: MlflowClient, name: str, decision: Decision) -> Decision:
    past = history(name, client)
    seq = (past[-1].seq if past else 0) + 1
    decision = Decision(**{**asdict(decision), "seq": seq})
    key = f"{HISTORY_PREFIX}{seq:06d}-v{decision.candidate}"
    client.set_registered_model_tag(name, key, json.dumps(asdict(decision)))
    return decision


def _figure(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def format_history(decisions: list[Decision]) -> str:
    """A table: when, candidate and holder with their figures, moved or not, why."""
    head = f"{'#':>4}  {'when (UTC)':25s} {'alias':9s} {'metric':7s} {'candidate':>9s} {'value':>8s} "
    head += f"{'holder':>7s} {'value':>8s}  {'moved':5s}  reason"
    rows = [head]
    for d in decisions:
        holder = f"v{d.holder}" if d.holder else "-"
        rows.append(
            f"{d.seq:>4}  {d.time:25s} {d.alias:9s} {d.metric:7s} {'v' + d.candidate:>9s} "
            f"{_figure(d.candidate_value):>8s} {holder:>7s} {_figure(d.holder_value):>8s}  "
            f"{'yes' if d.moved else 'no':5s}  {d.reason}"
        )
    return "\n".join(rows)


# -- promoting -----------------------------------------------------------------------------------------------


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _cache_evaluation(client: MlflowClient, holder: VersionRecord, data: EvalData, metrics: Mapping) -> None:
    for metric, value in _numeric(metrics).items():
        key = f"eval.{data.fingerprint[:16]}.{metric}"
        client.set_model_version_tag(holder.name, holder.version, key, repr(value))


def _holder_value(
    client: MlflowClient, holder: VersionRecord, candidate: VersionRecord, metric: str, evaluate: Evaluate | None
) -> tuple[float | None, str]:
    """The holder's `metric` on the candidate's data, or None with the reason it is unknown."""
    data = candidate.data
    known = holder.value_on(metric, data)
    if known is not None:
        return known, ""
    held_on = holder.data.fingerprint[:12] if holder.data else "unrecorded data"
    if evaluate is None:
        return None, (
            f"refused: holder v{holder.version} was evaluated on other data ({held_on}, candidate "
            f"{data.fingerprint[:12]}); re-evaluate it on the candidate's data (pass an evaluate callable, or "
            "`transpose promote --reevaluate`)"
        )
    metrics = dict(evaluate(holder, data))
    if metric not in metrics:
        raise RegistryError(f"the evaluate callable returned no {metric!r} (have: {', '.join(sorted(metrics))})")
    _cache_evaluation(client, holder, data, metrics)
    return float(metrics[metric]), f"holder re-evaluated on the candidate's data ({data.fingerprint[:12]}); "


def _decide(
    client: MlflowClient,
    candidate: VersionRecord,
    holder: VersionRecord | None,
    metric: str,
    alias: str,
    evaluate: Evaluate | None,
) -> Decision:
    value = candidate.metrics[metric]
    base = dict(time=_now(), alias=alias, metric=metric, candidate=candidate.version, candidate_value=value)
    base["fingerprint"] = candidate.data.fingerprint
    if holder is None:
        return Decision(**base, holder=None, holder_value=None, moved=True, reason="no champion yet")
    base["holder"] = holder.version
    if holder.version == candidate.version:
        own = holder.metrics.get(metric)
        return Decision(**base, holder_value=own, moved=False, reason=f"v{holder.version} already holds {alias}")
    held, note = _holder_value(client, holder, candidate, metric, evaluate)
    if held is None:
        return Decision(**base, holder_value=None, moved=False, reason=note)
    moved = value > held
    verdict = f"{metric} {value:.4f} {'>' if moved else '<='} {held:.4f}"
    return Decision(**base, holder_value=held, moved=moved, reason=note + verdict)


def _best_moved(decisions: list[Decision], alias: str, metric: str, fingerprint: str) -> Decision | None:
    """The best candidate the alias was moved to on this data since the data last changed."""
    since = [d for d in decisions if d.moved and d.alias == alias and d.metric == metric]
    for i in range(len(since) - 1, -1, -1):
        if since[i].fingerprint != fingerprint:
            since = since[i + 1 :]
            break
    return max(since, key=lambda d: (d.candidate_value, -d.seq), default=None)


def _repair(client: MlflowClient, name: str, alias: str, metric: str, data: EvalData) -> Decision | None:
    """Put the alias back on the best moved-to version if a concurrent promoter left it on a worse one."""
    best = _best_moved(history(name, client), alias, metric, data.fingerprint)
    current = champion(name, alias, client)
    if best is None or current is None or current.version == best.candidate:
        return None
    current_value = current.value_on(metric, data)
    if current_value is None or current_value >= best.candidate_value:
        return None
    client.set_registered_model_alias(name, alias, best.candidate)
    repair = Decision(
        time=_now(),
        alias=alias,
        metric=metric,
        candidate=best.candidate,
        candidate_value=best.candidate_value,
        holder=current.version,
        holder_value=current_value,
        fingerprint=data.fingerprint,
        moved=True,
        reason=f"repair: v{current.version} held {alias} though decision #{best.seq} moved it to the better "
        f"v{best.candidate}",
    )
    return _record(client, name, repair)


def promote(
    name: str,
    version: str | int,
    metric: str | None = None,
    alias: str = DEFAULT_ALIAS,
    evaluate: Evaluate | None = None,
    lock: Path | None = None,
) -> Decision:
    """Move `alias` to `version` if it beats the holder on the gate metric on the same data; record the decision.

    `evaluate(holder, data) -> metrics` re-scores a holder evaluated on other data; without it such a promotion
    is refused (recorded, alias unchanged; `Decision.refused`).
    """
    client = _client()
    candidate = get_version(name, version, client)
    metric = metric or candidate.gate_metric
    if not metric:
        raise RegistryError(f"{name} v{candidate.version} has no gate.metric tag: pass --metric (e.g. AP or PCKh)")
    if metric not in candidate.metrics:
        have = ", ".join(sorted(candidate.metrics)) or "none"
        raise RegistryError(f"{name} v{candidate.version} has no metric {metric!r} (metric.* tags: {have})")
    if candidate.data is None:
        raise RegistryError(
            f"{name} v{candidate.version} has no data.fingerprint tag: register versions with "
            "`transpose promote --run-info ...` so the evaluation data is recorded"
        )
    with file_lock(lock or lock_path(_tracking_uri())):
        holder = champion(name, alias, client)
        decision = _decide(client, candidate, holder, metric, alias, evaluate)
        if decision.moved:
            client.set_registered_model_alias(name, alias, candidate.version)
        decision = _record(client, name, decision)
        _repair(client, name, alias, metric, candidate.data)
    return decision


# -- loading -------------------------------------------------------------------------------------------------


def download_checkpoint(record: VersionRecord, dst: Path) -> Path:
    """The version's training run's best.pth (and model.json beside it, from the run or the card tag)."""
    weights = _download(record.run_id, CHECKPOINT, dst) if record.run_id else None
    if weights is None or not weights.is_file():
        raise RegistryError(
            f"{record.uri}: run {record.run_id or '(none)'} has no {CHECKPOINT} artifact "
            "(train with MLflow on: the train stage logs it)"
        )
    card = weights.with_name(CARD)
    if not card.is_file() and _download(record.run_id, CARD, dst) is None and record.card is not None:
        card.write_text(json.dumps(record.card))
    return weights


def load_registered_model(uri: str) -> torch.nn.Module:
    """The TransPose nn.Module (eval mode) of `models:/NAME@ALIAS` or `models:/NAME/VERSION`, rebuilt from its
    run's best.pth and model card (not the torch.export graph that `mlflow.pytorch.load_model` returns)."""
    from transpose.models import load_model

    record = resolve(uri)
    with tempfile.TemporaryDirectory() as tmp:
        weights = download_checkpoint(record, Path(tmp))
        if not weights.with_name(CARD).is_file():
            raise RegistryError(f"{uri}: no {CARD} in run {record.run_id} and no model_card tag on the version")
        return load_model(weights).eval()
