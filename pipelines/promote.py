"""DVC stage `promote`: register each trained model with its gate metric and move the `champion` alias to it
when it beats the current champion on the same data (pipelines/registry.py has the rules and the history).

    python -m pipelines.promote --stage promote

Section keys: alias, out (the decisions, a DVC metrics file) and models: NAME -> run_info (the training stage's
mlflow_run.json), metrics (the evaluation stage's metrics file), entry (the run's name inside it), metric (the
gate: AP or PCKh), dataset (coco|mpii), shards, split, annotations (the data the metrics were computed on: they
are fingerprinted, and a champion scored on other data is re-evaluated on it with pipelines/evaluate.py).
A model whose run_info is missing (its stage trained with --no-mlflow) is skipped, with the reason in `out`.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from pipelines.registry import (
    DEFAULT_ALIAS,
    GATE_METRICS,
    EvalData,
    Evaluate,
    RegistryError,
    VersionRecord,
    download_checkpoint,
    promote,
    register,
)

REQUIRED = ("run_info", "metrics", "dataset", "split", "shards", "annotations")


@dataclass(frozen=True)
class ModelEntry:
    """Where one registered model's run and scores are, and the data they were scored on."""

    run_info: str
    metrics: str
    dataset: str
    split: str
    shards: str
    annotations: str
    entry: str = ""  # the run's name inside the metrics file; "" when it holds one run
    metric: str = ""  # default: AP for coco, PCKh for mpii

    @classmethod
    def from_dict(cls, name: str, values: dict) -> ModelEntry:
        known = {f.name for f in fields(cls)}
        missing = [k for k in REQUIRED if values.get(k) in (None, "")]
        if missing:
            raise RegistryError(
                f"{name}: missing {', '.join(missing)}: set promote.models.{name}.KEY in params.yaml (or pass "
                f"--{' --'.join(k.replace('_', '-') for k in missing)} to `transpose promote`)"
            )
        return cls(**{k: str(v) for k, v in values.items() if k in known and v is not None})

    @property
    def gate(self) -> str:
        return self.metric or GATE_METRICS.get(self.dataset, "")


def entry_metrics(entry: ModelEntry) -> tuple[str, dict]:
    """The run's metrics from the evaluation stage's file (nested per run name)."""
    report = json.loads(Path(entry.metrics).read_text())
    if entry.entry:
        if entry.entry not in report:
            raise RegistryError(f"{entry.metrics} has no run {entry.entry!r} (runs: {', '.join(report)})")
        return entry.entry, report[entry.entry]
    if len(report) != 1:
        raise RegistryError(f"{entry.metrics} holds runs {', '.join(report)}: say which one (entry / --entry)")
    return next(iter(report.items()))


def register_entry(name: str, entry: ModelEntry, tracking_uri: str | None = None) -> VersionRecord:
    """Register the run's logged model as a new version of `name`, tagged with its metrics and data.

    The store: `tracking_uri`, else $MLFLOW_TRACKING_URI, else the one the run was logged to."""
    import mlflow

    info = json.loads(Path(entry.run_info).read_text())
    mlflow.set_tracking_uri(tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or info["tracking_uri"])
    _, metrics = entry_metrics(entry)
    data = EvalData.from_files(entry.dataset, entry.split, entry.annotations, entry.shards)
    return register(name, info["model_uri"], info["run_id"], metrics, entry.gate, data)


def evaluate_on_data(holder: VersionRecord, data: EvalData) -> dict[str, float]:
    """Score a registered version on `data` as the evaluation stages do (flip test, DARK)."""
    from pipelines.evaluate import evaluate_checkpoint
    from transpose.models import ModelCard

    now = EvalData.from_files(data.dataset, data.split, data.annotations, data.shards)
    if now.fingerprint != data.fingerprint:
        raise RegistryError(
            f"{data.annotations} / {data.shards} ({data.split}) changed since the candidate was scored on them: "
            "rerun its evaluation and register it again"
        )
    with tempfile.TemporaryDirectory() as tmp:
        weights = download_checkpoint(holder, Path(tmp))
        card = ModelCard.read(weights.with_name("model.json"))
        p = {"model": card.model, "image_size": list(card.image_size), "model_args": card.model_args}
        p.update(dataset=data.dataset, split=data.split, shards=data.shards, annotations=data.annotations)
        metrics, _, _ = evaluate_checkpoint(p, weights)
    print(f"re-evaluated {holder.uri} on {data.split}: " + ", ".join(f"{k}={v:.4f}" for k, v in metrics.items()))
    return metrics


def register_and_promote(
    name: str,
    entry: ModelEntry,
    alias: str = DEFAULT_ALIAS,
    evaluate: Evaluate | None = evaluate_on_data,
    tracking_uri: str | None = None,
) -> dict:
    """Register the entry's model and promote it; a report for the decisions file."""
    if not Path(entry.run_info).is_file():
        return {
            "skipped": f"{entry.run_info} is missing: its training stage ran without MLflow (--no-mlflow) "
            "or before stages logged models, so there is no logged model to register; rerun it with MLflow on"
        }
    record = register_entry(name, entry, tracking_uri)
    decision = promote(name, record.version, metric=entry.gate, alias=alias, evaluate=evaluate)
    report = {"version": record.version, "run_id": record.run_id, **asdict(decision)}
    print(f"{name} v{record.version}: {'moved' if decision.moved else 'kept'} {alias} ({decision.reason})")
    return report


def run(stage: str = "promote", params_file: Path = Path("params.yaml")) -> dict:
    from pipelines.params import stage_params

    p = stage_params(stage, params_file)
    alias = str(p.get("alias", DEFAULT_ALIAS))
    report = {"alias": alias, "models": {}}
    for name, values in (p.get("models") or {}).items():
        report["models"][name] = register_and_promote(name, ModelEntry.from_dict(name, values), alias)
    out = Path(p.get("out", "metrics/promote.json"))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    return report


def _cli_entry(args: argparse.Namespace) -> ModelEntry:
    """params.yaml's promote.models.NAME (if any), overridden by the command line's flags."""
    values: dict = {}
    if args.params.is_file():
        import yaml

        section = (yaml.safe_load(args.params.read_text()) or {}).get("promote") or {}
        values.update((section.get("models") or {}).get(args.name) or {})
    for key in (*REQUIRED, "entry", "metric"):
        if getattr(args, key, None):
            values[key] = getattr(args, key)
    return ModelEntry.from_dict(args.name, values)


def _use_store(tracking_uri: str | None) -> None:
    import mlflow

    from pipelines.tracking import tracking_uri as project_store

    mlflow.set_tracking_uri(tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or project_store())


def promote_command(args: argparse.Namespace) -> int:
    """`transpose promote`: history, promote a version, or register a stage's model and promote it."""
    from pipelines.registry import format_history, history

    if args.history:
        _use_store(args.tracking_uri)
        decisions = history(args.history)
        print(format_history(decisions) if decisions else f"no promotion decisions recorded for {args.history}")
        return 0
    if not args.name or not (args.version or args.run_info):
        raise RegistryError(
            "give --name NAME with --version N, or with --run-info FILE --metrics FILE; or --history NAME"
        )
    evaluate = evaluate_on_data if args.reevaluate else None
    if args.run_info:
        report = register_and_promote(args.name, _cli_entry(args), args.alias, evaluate, args.tracking_uri)
        if "skipped" in report:
            raise FileNotFoundError(report["skipped"])
        refused = report["reason"].startswith("refused")
    else:
        _use_store(args.tracking_uri)
        decision = promote(args.name, args.version, metric=args.metric, alias=args.alias, evaluate=evaluate)
        verb = "moved" if decision.moved else "kept"
        print(f"{args.name} v{decision.candidate}: {verb} {args.alias} ({decision.reason})")
        refused = decision.refused
    return 1 if refused else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stage", default="promote", help="params.yaml section")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = parser.parse_args()
    try:
        print(json.dumps(run(args.stage, args.params), indent=1))
    except (RegistryError, FileNotFoundError) as err:
        raise SystemExit(f"promote: {err}") from None


if __name__ == "__main__":
    main()
