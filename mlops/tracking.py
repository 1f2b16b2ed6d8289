"""MLflow tracking for the pipeline stages (the model library never imports MLflow; the stages reach it here).

Where runs go: `MLFLOW_TRACKING_URI` when set (a team's server, see infra/mlflow/), else a local store inside
the project folder: `sqlite:///mlruns/mlflow.db` with artifacts under `mlruns/artifacts` (git-ignored).
Nesting: every stage of one `dvc repro` is a child of one parent run. `scripts/repro.sh` opens the parent and
passes its id as TRANSPOSE_PARENT_RUN_ID; a stage run without it (plain `dvc repro`) finds or opens the
parent named by TRANSPOSE_PIPELINE_ID (default: the current git commit), so the stages still group.
"""

from __future__ import annotations

import json
import os
import subprocess
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
EXPERIMENT = os.environ.get("TRANSPOSE_EXPERIMENT", "transpose")


def tracking_uri() -> str:
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    (REPO / "mlruns").mkdir(exist_ok=True)
    return f"sqlite:///{REPO / 'mlruns' / 'mlflow.db'}"


def setup_mlflow():
    import mlflow

    mlflow.set_tracking_uri(tracking_uri())
    if mlflow.get_experiment_by_name(EXPERIMENT) is None:
        artifacts = None if os.environ.get("MLFLOW_TRACKING_URI") else (REPO / "mlruns" / "artifacts").as_uri()
        mlflow.create_experiment(EXPERIMENT, artifact_location=artifacts)
    mlflow.set_experiment(EXPERIMENT)
    return mlflow


def pipeline_id() -> str:
    if os.environ.get("TRANSPOSE_PIPELINE_ID"):
        return os.environ["TRANSPOSE_PIPELINE_ID"]
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
        return commit.stdout.strip() or "local"
    except OSError:
        return "local"


def parent_run_id(mlflow) -> str:
    if os.environ.get("TRANSPOSE_PARENT_RUN_ID"):
        return os.environ["TRANSPOSE_PARENT_RUN_ID"]
    pid = pipeline_id()
    found = mlflow.search_runs(
        filter_string=f"tags.`transpose.pipeline` = '{pid}' and tags.`transpose.parent` = 'true'",
        max_results=1,
        output_format="list",
    )
    if found:
        return found[0].info.run_id
    client = mlflow.MlflowClient()
    run = client.create_run(
        mlflow.get_experiment_by_name(EXPERIMENT).experiment_id,
        tags={"transpose.pipeline": pid, "transpose.parent": "true", "mlflow.runName": f"dvc repro {pid}"},
    )
    return run.info.run_id


class MlflowTracker:
    """The trainer's tracker over an active MLflow run."""

    def __init__(self, mlflow):
        self.mlflow = mlflow

    def log_params(self, params: dict) -> None:
        flat = {k: str(v)[:500] for k, v in params.items()}
        self.mlflow.log_params(flat)

    def log_metrics(self, metrics: dict, step: int) -> None:
        clean = {k.replace("@", "_at_"): float(v) for k, v in metrics.items() if isinstance(v, (int, float))}
        self.mlflow.log_metrics(clean, step=step)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        self.mlflow.log_artifact(str(path), artifact_path=artifact_path)

    def log_model(self, model, image_size: tuple[int, int]) -> str:
        """The model with its signature (exported with torch.export; a batch-2 example keeps the batch
        dimension dynamic). Returns the model URI."""
        import numpy as np

        example = np.zeros((2, 3, *image_size), dtype=np.float32)
        info = self.mlflow.pytorch.log_model(model.eval(), name="model", input_example=example)
        return info.model_uri

    def write_run_info(self, path: str | Path, model_uri: str) -> Path:
        """Where this stage's run and logged model are (read by the `promote` stage to register the model)."""
        run = self.mlflow.active_run()
        info = {"run_id": run.info.run_id, "model_uri": model_uri, "tracking_uri": tracking_uri()}
        Path(path).write_text(json.dumps(info, indent=1) + "\n")
        return Path(path)


@contextmanager
def stage_run(stage: str, params: dict, enabled: bool = True):
    """An MLflow run for one stage, nested under the pipeline's parent run; yields a tracker (None if off)."""
    if not enabled:
        yield None
        return
    mlflow = setup_mlflow()
    parent = parent_run_id(mlflow)
    with (
        mlflow.start_run(run_id=parent, log_system_metrics=False),
        mlflow.start_run(run_name=stage, nested=True, log_system_metrics=True) as run,
    ):
        mlflow.set_tags({"transpose.stage": stage, "transpose.pipeline": pipeline_id()})
        mlflow.log_params(_flatten(params, prefix=stage))
        yield MlflowTracker(mlflow)
        print(f"MLflow run {run.info.run_id} ({stage}) in {tracking_uri()}")


def _flatten(tree: dict, prefix: str = "") -> dict[str, str]:
    out = {}
    for key, value in tree.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, dict):
            out.update(_flatten(value, name))
        else:
            out[name] = str(value)[:500]
    return out
