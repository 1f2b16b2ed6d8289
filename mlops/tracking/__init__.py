"""MLflow tracking for the pipeline stages (the model library never imports MLflow; the stages reach it here).

Where runs go: `MLFLOW_TRACKING_URI` when set (a team's server, see infra/mlflow/), else a local store inside
the project folder: `sqlite:///mlruns/mlflow.db` with artifacts under `mlruns/artifacts` (git-ignored).
Nesting: every stage of one `dvc repro` is a child of one parent run. `scripts/repro.sh` opens the parent and
passes its id as TRANSPOSE_PARENT_RUN_ID; a stage run without it (plain `dvc repro`) finds or opens the
parent named by TRANSPOSE_PIPELINE_ID (default: the current git commit), so the stages still group.

Tracking never stops training (docs/tracking.md): log_params / log_metrics / log_artifact only put the call on
a bounded queue that a background thread delivers, retrying with backoff while the server is away (each HTTP
attempt is kept short with MLflow's MLFLOW_HTTP_REQUEST_* variables). A full queue drops its oldest metrics
(counted, and written to the undelivered file). At stage end the queue is flushed for at most
TRANSPOSE_TRACKING_FLUSH_S seconds (default 120); what is still not delivered goes to
`<out_dir>/tracking_undelivered.jsonl` (`replay_undelivered` sends it later) instead of raising. The model is
logged after the weights are on disk; if the server stays away for TRANSPOSE_TRACKING_FINAL_S seconds
(default 180) then, the stage fails with a message saying so, and rerunning it resumes and logs again.
A resumed stage continues its MLflow run (`resumable_run_id` reads it from the checkpoint to resume). A stage
that ends marks its run (and the parent) FINISHED, one that dies FAILED.

Modules: `store` (where runs go, the parent run), `delivery` (the queued tracker and its retries), `stage`
(one run per stage, continued on resume).
"""

from mlops.tracking.delivery import (
    UNDELIVERED,
    MlflowTracker,
    TrackingUnavailable,
    replay_undelivered,
    short_http_attempts,
)
from mlops.tracking.stage import resumable_run_id, stage_run
from mlops.tracking.store import (
    EXPERIMENT,
    REPO,
    flatten_params,
    parent_run_id,
    pipeline_id,
    setup_mlflow,
    tracking_uri,
)

__all__ = [
    "EXPERIMENT",
    "REPO",
    "UNDELIVERED",
    "MlflowTracker",
    "TrackingUnavailable",
    "flatten_params",
    "parent_run_id",
    "pipeline_id",
    "replay_undelivered",
    "resumable_run_id",
    "setup_mlflow",
    "short_http_attempts",
    "stage_run",
    "tracking_uri",
]
