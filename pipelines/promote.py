"""DVC stage `promote`: register each trained model with its gate metric and move the `champion` alias to it
when it beats the current champion on the same data (mlops.registry has the rules and the history).

    python -m pipelines.promote

Section keys: alias, decisions (the decisions of this run, a JSON record: not DVC metrics, they hold times and
fingerprints), onnx_dir (each registered model exported to ONNX_DIR/NAME.onnx, verified against PyTorch, and
attached to its version: tags onnx.uri / onnx.sha256; empty: no export), and models: NAME -> {run: a training run's
out_dir, evaluation: the evaluation stage's NAME_evaluation.json for it}. Everything else is read from there: the
logged model and MLflow run (run/mlflow_run.json), the model card (run/model.json), the metrics, the gate metric of
the dataset kind, and the data they were computed on (fingerprinted). A champion scored on other data is
re-evaluated on the candidate's with the evaluation stage's own code. A model whose run has no mlflow_run.json (it
trained with --no-mlflow) is skipped, with the reason in the decisions file. Promoters elsewhere (other machines on
the same tracking server) take turns with this one through the registry; a turn not granted within
$TRANSPOSE_PROMOTE_WAIT seconds (300) stops the stage with the holder's name and lease.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

from dataops.shards import read_manifest
from mlops.registry import (
    DEFAULT_ALIAS,
    EvalData,
    Evaluate,
    RegistryError,
    VersionRecord,
    attach_file,
    download_checkpoint,
    promote,
    register,
)
from mlops.tracking import stage_run
from pipelines.evaluate import EvaluateSection, check_run, evaluate_run
from pipelines.params import load_params, parse_section, stage_arguments
from transpose.export.onnx import ExportError
from transpose.models import checkpoint_path, load_trained, read_card


@dataclass(frozen=True)
class ModelEntry:
    """A registered model's candidate: the training run and the evaluation of it."""

    run: str  # the training run's out_dir (best.pth, model.json, mlflow_run.json)
    evaluation: str  # the evaluation stage's NAME_evaluation.json of that run


@dataclass(frozen=True)
class PromoteSection:
    models: dict[str, ModelEntry]
    alias: str = DEFAULT_ALIAS
    decisions: str = "outputs/promote/decisions.json"
    onnx_dir: str = "outputs/promote/onnx"

    def __post_init__(self) -> None:
        if not self.alias:
            raise ValueError("alias: must be a name, e.g. champion")


def read_evaluation(path: str | Path) -> dict:
    """An evaluation record (pipelines.evaluate), checked."""
    path = Path(path)
    try:
        record = json.loads(path.read_text())
        _ = record["metrics"][record["gate_metric"]], record["data"]["fingerprint"], record["dataset_kind"]
    except FileNotFoundError:
        raise RegistryError(f"{path} is missing: run the evaluation stage of this model first") from None
    except (ValueError, KeyError, TypeError) as err:
        raise RegistryError(f"{path}: not an evaluation record ({err!r}); rerun the evaluation stage") from None
    return record


def eval_data(record: dict) -> EvalData:
    data = record["data"]
    return EvalData(record["dataset_kind"], data["split"], data["ground_truth"], data["shards"], data["fingerprint"])


def register_entry(name: str, entry: ModelEntry, tracking_uri: str | None = None) -> VersionRecord:
    """Register the run's logged model as a new version of `name`, tagged with its metrics and data.

    The store: `tracking_uri`, else $MLFLOW_TRACKING_URI, else the one the run was logged to."""
    import mlflow

    info = json.loads((Path(entry.run) / "mlflow_run.json").read_text())
    mlflow.set_tracking_uri(tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or info["tracking_uri"])
    record = read_evaluation(entry.evaluation)
    card = json.loads((Path(entry.run) / "model.json").read_text())
    return register(
        name, info["model_uri"], info["run_id"], record["metrics"], record["gate_metric"], eval_data(record), card
    )


def evaluate_on_data(holder: VersionRecord, data: EvalData) -> dict[str, float]:
    """Score a registered version on `data` as the evaluation stages do (flip test, DARK)."""
    now = EvalData.from_files(data.dataset, data.split, data.annotations, data.shards)
    if now.fingerprint != data.fingerprint:
        raise RegistryError(
            f"{data.annotations} / {data.shards} ({data.split}) changed since the candidate was scored on them: "
            "rerun its evaluation and register it again"
        )
    manifest = read_manifest(data.shards, data.split)
    with tempfile.TemporaryDirectory() as tmp:
        weights = download_checkpoint(holder, Path(tmp))
        check_run(read_card(weights), manifest, f"{holder.uri} on {data.shards} ({data.split})")
        section = EvaluateSection(runs={"holder": str(weights)}, shards=data.shards, split=data.split, out_dir=tmp,
                                  metrics=str(Path(tmp) / "metrics.json"))  # fmt: skip
        metrics, _, _ = evaluate_run(section, manifest, weights)
    print(f"re-evaluated {holder.uri} on {data.split}: " + ", ".join(f"{k}={v:.4f}" for k, v in metrics.items()))
    return metrics


def attach_onnx(record: VersionRecord, run: str | Path, out: Path) -> dict:
    """Export the run's model to `out` (verified against PyTorch by onnxruntime: an unfaithful export stops the
    stage) and attach it to the version."""
    from transpose.export.onnx import export_onnx

    report = export_onnx(*load_trained(run), out)
    worst = f"{report.worst_relative_diff:.2e}"
    uri = attach_file(record, out, "onnx", "onnx", {"worst_relative_diff": worst})
    print(f"{record.uri}: attached {out} ({uri}; onnxruntime matches PyTorch to {worst} of the max output)")
    return {"file": str(out), "uri": uri, "worst_relative_diff": report.worst_relative_diff}


def register_and_promote(
    name: str,
    entry: ModelEntry,
    alias: str = DEFAULT_ALIAS,
    evaluate: Evaluate | None = evaluate_on_data,
    tracking_uri: str | None = None,
    wait: float | None = None,
    onnx_dir: str | Path | None = None,
) -> dict:
    """Register the entry's model, attach its ONNX export (when `onnx_dir` is given) and promote it (waiting at
    most `wait` seconds for the promotion turn, default $TRANSPOSE_PROMOTE_WAIT or 300); a report for the
    decisions file."""
    if not (Path(entry.run) / "mlflow_run.json").is_file():
        return {
            "skipped": f"{entry.run}/mlflow_run.json is missing: its training stage ran without MLflow "
            "(--no-mlflow), so there is no logged model to register; rerun it with MLflow on"
        }
    record = register_entry(name, entry, tracking_uri)
    onnx = attach_onnx(record, entry.run, Path(onnx_dir) / f"{name}.onnx") if onnx_dir else None
    decision = promote(name, record.version, metric=record.gate_metric, alias=alias, evaluate=evaluate, wait=wait)
    report = {"version": record.version, "run_id": record.run_id, **asdict(decision)}
    if onnx:
        report["onnx"] = onnx
    print(f"{name} v{record.version}: {'moved' if decision.moved else 'kept'} {alias} ({decision.reason})")
    return report


def main() -> None:
    args = stage_arguments(__doc__, stage="promote").parse_args()
    values = load_params(args.params).get(args.stage)
    section = parse_section(PromoteSection, values, args.stage)
    for name, entry in section.models.items():  # every input before anything is registered
        try:
            read_evaluation(entry.evaluation)
        except RegistryError as err:
            raise SystemExit(f"params.yaml: {args.stage}.models.{name}.evaluation: {err}") from None
        if not (Path(entry.run) / "model.json").is_file():
            raise SystemExit(f"params.yaml: {args.stage}.models.{name}.run {entry.run}: no model.json there")
        if section.onnx_dir and not checkpoint_path(entry.run).is_file():
            raise SystemExit(
                f"params.yaml: {args.stage}.models.{name}.run {entry.run}: no {checkpoint_path(entry.run).name} "
                f"there to export to ONNX: rerun its training stage, or set {args.stage}.onnx_dir: '' to skip exports"
            )
    report = {"alias": section.alias, "models": {}}
    with stage_run(args.stage, values, enabled=not args.no_mlflow) as tracker:
        try:
            for name, entry in section.models.items():
                report["models"][name] = register_and_promote(
                    name, entry, section.alias, onnx_dir=section.onnx_dir or None
                )
        except RegistryError as err:
            raise SystemExit(f"promote: {err}") from None
        except ExportError as err:
            raise SystemExit(f"promote: the ONNX export failed, so nothing was attached: {err}") from None
        out = Path(section.decisions)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2) + "\n")
        if tracker is not None:
            moved = {f"{n}/moved": float(r.get("moved", False)) for n, r in report["models"].items()}
            tracker.log_metrics(moved, step=0)
            tracker.log_artifact(out)
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
