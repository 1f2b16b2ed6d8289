"""MLflow for a sweep: one run for the sweep, and one nested run per trial (restored trials continue theirs)."""

from __future__ import annotations

import json
from dataclasses import asdict

from mlops.tuning.settings import TuneSettings, tune_name

SWEEP_RUN_FILE = "mlflow_sweep_run.json"


def mlflow_callback_class():
    from ray.air.integrations.mlflow import MLflowLoggerCallback

    class NestedMLflowCallback(MLflowLoggerCallback):
        """One MLflow run per trial, a child of the sweep's run (tag mlflow.parentRunId, given in `tags`); a
        trial that starts again after a restore continues its own run."""

        def log_trial_start(self, trial) -> None:
            if trial not in self._trial_runs:
                self._trial_runs[trial] = self._trial_run(trial)
            super().log_trial_start(trial)

        def _trial_run(self, trial) -> str:
            import mlflow

            client = mlflow.MlflowClient(self.tracking_uri)
            experiment = client.get_experiment_by_name(self.experiment_name).experiment_id
            parent = self.tags["mlflow.parentRunId"]
            found = client.search_runs(
                [experiment],
                f"tags.`mlflow.parentRunId` = '{parent}' and tags.`ray.trial_id` = '{trial.trial_id}'",
                max_results=1,
            )
            if found:
                client.update_run(found[0].info.run_id, status="RUNNING")
                return found[0].info.run_id
            tags = {**self.tags, "trial_name": str(trial), "ray.trial_id": trial.trial_id, "mlflow.runName": str(trial)}
            return client.create_run(experiment, tags=tags, run_name=str(trial)).info.run_id

    return NestedMLflowCallback


def sweep_run(settings: TuneSettings) -> str:
    """The sweep's MLflow run: the one recorded in the sweep's folder (a resumed sweep), or a new one."""
    from mlops.tracking import EXPERIMENT, flatten_params, setup_mlflow, tracking_uri

    record = settings.experiment_dir / SWEEP_RUN_FILE
    mlflow = setup_mlflow()
    client = mlflow.MlflowClient()
    if record.is_file():
        run_id = json.loads(record.read_text())["run_id"]
        try:
            client.update_run(run_id, status="RUNNING")
            return run_id
        except mlflow.exceptions.MlflowException:  # another tracking store than the sweep started with
            print(f"MLflow run {run_id} of this sweep is not in {tracking_uri()}: a new sweep run")
    run = client.create_run(
        mlflow.get_experiment_by_name(EXPERIMENT).experiment_id,
        tags={
            "mlflow.runName": f"tune {settings.name}",
            "transpose.sweep": settings.name,
            "transpose.stage": settings.stage,
        },
    )
    for key, value in flatten_params(asdict(settings), prefix="tune").items():
        client.log_param(run.info.run_id, key, value)
    record.parent.mkdir(parents=True, exist_ok=True)
    record.write_text(json.dumps({"run_id": run.info.run_id}) + "\n")
    return run.info.run_id


def finish_sweep_run(run_id: str, best: dict, settings: TuneSettings) -> None:
    import mlflow

    from mlops.tracking import tracking_uri

    client = mlflow.MlflowClient(tracking_uri())
    client.log_metric(run_id, f"best_{tune_name(settings.metric)}", best["value"])
    client.set_tag(run_id, "transpose.best_trial", best["trial_id"])
    client.set_tag(run_id, "transpose.best_config", json.dumps(best["config"], sort_keys=True))
    client.set_terminated(run_id, "FINISHED")
