"""Where the pipeline's MLflow runs go, and how one `dvc repro` groups its stages under one parent run.

`MLFLOW_TRACKING_URI` when set (a team's server, see infra/mlflow/), else a local store inside the project
folder: `sqlite:///mlruns/mlflow.db` with artifacts under `mlruns/artifacts` (git-ignored). `scripts/repro.sh`
opens the parent and passes its id as TRANSPOSE_PARENT_RUN_ID; a stage run without it (plain `dvc repro`)
finds or opens the parent named by TRANSPOSE_PIPELINE_ID (default: the current git commit).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
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


def flatten_params(tree: dict, prefix: str = "") -> dict[str, str]:
    """A nested params section as MLflow params: dotted keys, values cut to MLflow's 500 characters."""
    out = {}
    for key, value in tree.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, dict):
            out.update(flatten_params(value, name))
        else:
            out[name] = str(value)[:500]
    return out
