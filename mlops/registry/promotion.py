"""Promotion: move an alias to a version only when it beats the holder on the same data, and keep every
decision as a registered-model tag (MLflow keeps no history of alias moves, mlflow/mlflow#2169)."""

from __future__ import annotations

import json
import random
import time
from collections.abc import Mapping
from dataclasses import asdict, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

from mlops.registry.locking import (
    LEASE_ENV,
    LEASE_S,
    WAIT_ENV,
    WAIT_S,
    Turn,
    file_lock,
    lock_path,
    registry_turn,
    seconds,
)
from mlops.registry.records import (
    DEFAULT_ALIAS,
    HISTORY_PREFIX,
    Decision,
    EvalData,
    Evaluate,
    RegistryError,
    VersionRecord,
)
from mlops.registry.versions import (
    champion,
    get_version,
    mlflow_client,
    numeric,
    registered_model,
    store_errors,
    tracking_uri,
)

if TYPE_CHECKING:
    from mlflow import MlflowClient


def history(name: str, client: MlflowClient | None = None) -> list[Decision]:
    """Every promotion decision recorded for `name`, oldest first."""
    client = client or mlflow_client()
    with store_errors(f"{name}: reading the promotion history"):
        tags = registered_model(client, name).tags or {}
    decisions = []
    for key, value in tags.items():
        number = key.removeprefix(HISTORY_PREFIX).split("-", 1)[0]
        if key.startswith(HISTORY_PREFIX) and number.isdigit():
            data = {**json.loads(value), "seq": int(number)}
            decisions.append(Decision(**{k: data.get(k) for k in Decision.__dataclass_fields__}))
    return sorted(decisions, key=lambda d: (d.seq, d.time))


def _key(decision: Decision) -> str:
    return f"{HISTORY_PREFIX}{decision.seq:06d}-v{decision.candidate}"


def _record(client: MlflowClient, name: str, decision: Decision, turn: Turn, attempts: int = 5) -> Decision:
    """Write `decision` under the next number, then read the history back: if another writer (one without the
    turn: an older version of this code, or one whose lease lapsed) took the same number, take the next one."""
    for _ in range(attempts):
        past = history(name, client)
        numbered = replace(decision, seq=max((d.seq for d in past), default=0) + 1)
        turn.check()
        client.set_registered_model_tag(name, _key(numbered), json.dumps(asdict(numbered)))
        same = [d for d in history(name, client) if d.seq == numbered.seq]
        if same == [numbered]:
            return numbered
        if numbered in same:  # beside another writer's: give the number up (else it overwrote this one's key)
            client.delete_registered_model_tag(name, _key(numbered))
        time.sleep(random.uniform(0.05, 0.3))
    raise RegistryError(
        f"{name}: decision numbers kept colliding with another writer's ({attempts} tries): a promoter is writing "
        "decisions without taking the promotion turn (an older version of this code?); upgrade it and rerun"
    )


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


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _cache_evaluation(
    client: MlflowClient, holder: VersionRecord, data: EvalData, metrics: Mapping, turn: Turn
) -> None:
    turn.check()
    for metric, value in numeric(metrics).items():
        key = f"eval.{data.fingerprint[:16]}.{metric}"
        client.set_model_version_tag(holder.name, holder.version, key, repr(value))


def _holder_value(
    client: MlflowClient,
    holder: VersionRecord,
    candidate: VersionRecord,
    metric: str,
    evaluate: Evaluate | None,
    turn: Turn,
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
    _cache_evaluation(client, holder, data, metrics, turn)
    return float(metrics[metric]), f"holder re-evaluated on the candidate's data ({data.fingerprint[:12]}); "


def _decide(
    client: MlflowClient,
    candidate: VersionRecord,
    holder: VersionRecord | None,
    metric: str,
    alias: str,
    evaluate: Evaluate | None,
    turn: Turn,
) -> Decision:
    value = candidate.metrics[metric]
    base = dict(time=_now(), alias=alias, metric=metric, candidate=candidate.version, candidate_value=value)
    base["fingerprint"] = candidate.data.fingerprint
    if holder is None:
        return Decision(**base, holder=None, holder_value=None, moved=True, reason=f"no version holds {alias} yet")
    base["holder"] = holder.version
    if holder.version == candidate.version:
        own = holder.metrics.get(metric)
        return Decision(**base, holder_value=own, moved=False, reason=f"v{holder.version} already holds {alias}")
    held, note = _holder_value(client, holder, candidate, metric, evaluate, turn)
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


def _repair(client: MlflowClient, name: str, alias: str, metric: str, data: EvalData, turn: Turn) -> Decision | None:
    """Put the alias back on the best moved-to version if a concurrent promoter left it on a worse one."""
    best = _best_moved(history(name, client), alias, metric, data.fingerprint)
    current = champion(name, alias, client)
    if best is None or current is None or current.version == best.candidate:
        return None
    current_value = current.value_on(metric, data)
    if current_value is None or current_value >= best.candidate_value:
        return None
    turn.check()
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
    return _record(client, name, repair, turn)


def promote(
    name: str,
    version: str | int,
    metric: str | None = None,
    alias: str = DEFAULT_ALIAS,
    evaluate: Evaluate | None = None,
    lock: Path | None = None,
    wait: float | None = None,
    lease: float | None = None,
) -> Decision:
    """Move `alias` to `version` if it beats the holder on the gate metric on the same data; record the decision.

    `evaluate(holder, data) -> metrics` re-scores a holder evaluated on other data; without it such a promotion
    is refused (recorded, alias unchanged; `Decision.refused`).

    Concurrent promoters of `name` take turns through tickets in the registry (`locking.registry_turn`), on one
    machine first through the file lock `lock` (default `lock_path`). `wait` (default $TRANSPOSE_PROMOTE_WAIT or
    300 s) bounds the wait for the turn, then PromotionBusy names the holder; `lease` (default
    $TRANSPOSE_PROMOTE_LEASE or 60 s) is how long a crashed promoter's ticket blocks the others.
    """
    client = mlflow_client()
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
            "`transpose promote --run RUN --evaluation FILE` so the evaluation data is recorded"
        )
    wait = wait or seconds(WAIT_ENV, WAIT_S)
    lease = lease or seconds(LEASE_ENV, LEASE_S)
    deadline = time.monotonic() + wait
    with file_lock(lock or lock_path(tracking_uri()), timeout=wait):
        left = max(deadline - time.monotonic(), 1.0)
        turn = registry_turn(client, name, alias, lease=lease, wait=left)
        with turn as held, store_errors(f"{name}@{alias}: promoting v{candidate.version}"):
            holder = champion(name, alias, client)
            decision = _decide(client, candidate, holder, metric, alias, evaluate, held)
            if decision.moved:
                held.check()
                client.set_registered_model_alias(name, alias, candidate.version)
            decision = _record(client, name, decision, held)
            _repair(client, name, alias, metric, candidate.data, held)
    return decision
