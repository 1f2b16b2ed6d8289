"""One MLflow run per pipeline stage, nested under the pipeline's parent run: opened (or, for a resumed stage,
continued), handed to the stage as a tracker, and marked FINISHED or FAILED at the end."""

from __future__ import annotations

from contextlib import contextmanager, nullcontext, suppress
from pathlib import Path

from mlops.tracking.delivery import (
    MlflowTracker,
    TrackingUnavailable,
    _seconds,
    _short,
    retry,
    short_http_attempts,
    transient,
)
from mlops.tracking.store import EXPERIMENT, flatten_params, parent_run_id, pipeline_id, setup_mlflow, tracking_uri
from transpose.engine.checkpoints import find_resumable


def resumable_run_id(checkpoint_dir: str | Path, fingerprint: str) -> str | None:
    """The MLflow run a resumed stage continues: the `tracking_run_id` of the checkpoint the trainer will resume
    (the newest intact one, `transpose.engine.checkpoints.find_resumable`) when it is of a run of this
    `fingerprint`; None when there is none, or it is of another run."""
    found = find_resumable(Path(checkpoint_dir))
    if found is None or found.state.get("fingerprint") != fingerprint:
        return None
    run_id = found.state.get("tracking_run_id")
    return run_id if isinstance(run_id, str) and run_id else None


def _continuable(mlflow, run_id: str | None):
    """The run to continue (exists, not deleted, in this experiment), else None with a note why not."""
    if not run_id:
        return None
    from mlflow.exceptions import MlflowException

    try:
        run = mlflow.MlflowClient().get_run(run_id)
    except MlflowException as err:
        if transient(err):
            raise
        print(f"MLflow run {run_id} of the checkpoint is not there ({_short(err)}): opening a new run")
        return None
    experiment = mlflow.get_experiment_by_name(EXPERIMENT)
    if run.info.lifecycle_stage != "active" or experiment is None or run.info.experiment_id != experiment.experiment_id:
        print(f"MLflow run {run_id} of the checkpoint is deleted or of another experiment: opening a new run")
        return None
    return run


def _next_system_step(client, run_id: str) -> int:
    try:
        history = client.get_metric_history(run_id, "system/cpu_utilization_percentage")
    except Exception:
        return 0
    return max((m.step for m in history), default=-1) + 1


@contextmanager
def stage_run(
    stage: str,
    params: dict,
    enabled: bool = True,
    run_id: str | None = None,
    out_dir: str | Path | None = None,
    short_attempts: bool = False,
):
    """An MLflow run for one stage, nested under the pipeline's parent run; yields a tracker (None if off).

    `run_id` (a resumed stage's, see `resumable_run_id`) is continued when it exists in this experiment; else a
    new run opens. The server must answer within TRANSPOSE_TRACKING_START_S seconds (default 120) here at the
    start; after that an outage only delays the records. `out_dir` (default: params' out_dir) is where the
    calls that could not be delivered are written. Opening and closing the run use short HTTP attempts (see
    `short_http_attempts`); `short_attempts` keeps them short for the whole stage, for a stage whose own code
    makes no MLflow calls that want MLflow's long retries (training; not promote, with its registry calls)."""
    if not enabled:
        yield None
        return
    out_dir = out_dir or (params.get("out_dir") if isinstance(params, dict) else None)
    with short_http_attempts():
        mlflow, parent, resumed, run = _open_stage_run(stage, run_id)
        client = mlflow.MlflowClient(tracking_uri=mlflow.get_tracking_uri())
        tracker = MlflowTracker(
            mlflow,
            run.info.run_id,
            out_dir,
            client=client,
            parent_run_id=parent,
            known_params=dict(resumed.data.params) if resumed else None,
            system_metrics=True,
            system_step=_next_system_step(client, run.info.run_id) if resumed else 0,
            owns_active_runs=True,
        )
    if resumed:
        print(f"MLflow: continuing run {run.info.run_id} ({stage}) of the resumed checkpoint")
    tracker.set_tags({"transpose.stage": stage, "transpose.pipeline": pipeline_id()})
    tracker.log_params(flatten_params(params, prefix=stage))
    status = "FAILED"
    try:
        with short_http_attempts() if short_attempts else nullcontext():
            yield tracker
        status = "FINISHED"
    finally:
        with short_http_attempts():
            tracker.close(status)
    print(f"MLflow run {run.info.run_id} ({stage}) in {tracking_uri()}")


def _open_stage_run(stage: str, run_id: str | None):
    """(mlflow, parent run id, the run continued or None, the stage's active run), each call retried for at
    most TRANSPOSE_TRACKING_START_S seconds."""
    wait = _seconds("TRANSPOSE_TRACKING_START_S", 120.0)
    try:
        mlflow = retry(setup_mlflow, f"connecting to {tracking_uri()}", wait)
        parent = retry(lambda: parent_run_id(mlflow), "finding the pipeline's parent run", wait)
        resumed = retry(lambda: _continuable(mlflow, run_id), "reading the run to continue", wait)
        retry(lambda: mlflow.start_run(run_id=parent, log_system_metrics=False), "opening the parent run", wait)
    except Exception as err:
        if transient(err):
            raise TrackingUnavailable(
                f"MLflow at {tracking_uri()} did not answer for {wait:.0f} s (TRANSPOSE_TRACKING_START_S) at the "
                f"start of stage {stage} ({_short(err)}): start the server, or run the stage with --no-mlflow"
            ) from err
        raise
    try:
        run = retry(
            lambda: mlflow.start_run(
                run_id=resumed.info.run_id if resumed else None, run_name=stage, nested=True, log_system_metrics=False
            ),
            "opening the stage's run",
            wait,
        )
    except BaseException:
        with suppress(Exception):
            mlflow.end_run("FAILED")  # the parent: not left RUNNING
        raise
    return mlflow, parent, resumed, run
