"""Ray Tune hyperparameter search over a training stage: every trial is the stage's own DeepSpeed training
(`pipelines.train.run_section`), run by a Ray Train `TorchTrainer` on `workers_per_trial` processes.

    python -m pipelines.tune                        # local Ray, or the cluster in RAY_ADDRESS
    python -m pipelines.tune --address 10.0.0.1:6379 --num-samples 16
    dvc repro infra/ray/dvc.yaml                    # the same, as a DVC stage (see "DVC" below)

params.yaml section `tune:` (all keys but `space` have defaults):
  stage                  the stage section to tune (pretrain); trials train it with the overrides below
  name, storage_path     the sweep's folder is STORAGE_PATH/NAME (experiment state, trials' out_dirs);
                         on several nodes it must be on a file system every node mounts at the same path
  space                  dotted keys into the stage section -> {loguniform|uniform: [lo, hi]},
                         {choice: [a, b, ...]} or {grid: [a, b, ...]} (every value, times num_samples)
  metric, mode           the validation metric (val/AP for COCO, val/PCKh for MPII) and max|min
  scheduler              {type: asha|fifo, max_t, grace_period, reduction_factor}; ASHA's time unit is the
                         epoch (max_t defaults to the trial epochs) and it stops the worse trials early
  num_samples, max_concurrent_trials, seed
  workers_per_trial, cpus_per_worker, gpus_per_worker, use_gpu, placement_strategy (PACK|SPREAD),
  trial_cpus             the CPU the trial's driver (the TorchTrainer's owner) takes; small but not 0
  epochs, overrides      trial-only changes (fewer epochs, val_every_epochs: 1); not in the best params
  num_cpus               CPUs of a local Ray (default: all); ignored when joining a cluster
  best_params_out        where the best configuration is written, as {STAGE: section} YAML

How a trial runs: the driver builds the stage section with the trial's values and out_dir
STORAGE_PATH/NAME/trials/TRIAL_ID, and fits a TorchTrainer whose workers call `run_section` with an
`on_epoch_end` hook: every rank reports each validated epoch to Ray Train (`ray.train.report`, metric names
made Tune-safe: val/AP -> val_AP), and `TuneReportCallback` passes rank 0's report on to Tune and ASHA.

Restore: when STORAGE_PATH/NAME holds a sweep, the same command resumes it (`Tuner.restore`, errored trials
included): finished trials are not run again, unfinished ones start again in their out_dir, where the Trainer
resumes from its own newest checkpoint. `--fresh` deletes the sweep and starts over (needed after changing
the search space, which a restored sweep ignores).

MLflow (`pipelines.tracking`: MLFLOW_TRACKING_URI or the project's sqlite store): one run for the sweep, and
one nested run per trial (its sampled values as params, its reports as metrics; a restored trial continues
its own run). The best trial's value and configuration are logged on the sweep's run.

Cluster: with `--address` or RAY_ADDRESS the sweep joins that Ray cluster (infra/ray/: `ray up` on premises,
KubeRay RayCluster/RayJob); otherwise it starts a local Ray with `num_cpus` CPUs.

DVC: the sweep is the stage `tune` of infra/ray/dvc.yaml, not of the root dvc.yaml. Plain `dvc repro` only
reproduces the root dvc.yaml (and what it depends on), so it never starts a sweep;
`dvc repro infra/ray/dvc.yaml` runs it. Its output, `best_params_out`, is a params file: copy its section
over params.yaml's, or use the `dvc exp run --set-param` lines the sweep prints, then `dvc repro`.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import re
import shutil
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import yaml

from pipelines.params import reject_unknown_keys

SWEEP_RUN_FILE = "mlflow_sweep_run.json"


# ---- configuration -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SchedulerConfig:
    type: str = "asha"  # asha | fifo
    max_t: int | None = None  # epochs; default: the trial epochs
    grace_period: int = 1
    reduction_factor: int = 2


@dataclass(frozen=True)
class TuneSettings:
    space: dict[str, dict]
    stage: str = "pretrain"
    name: str = "sweep"
    storage_path: str = "outputs/tune"
    best_params_out: str = "outputs/tune/best_params.yaml"
    metric: str = "val/AP"
    mode: str = "max"
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    num_samples: int = 4
    max_concurrent_trials: int = 1
    seed: int | None = None
    workers_per_trial: int = 2
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 1.0
    use_gpu: bool = False
    placement_strategy: str = "PACK"
    trial_cpus: float = 0.1
    epochs: int | None = None
    overrides: dict[str, Any] = field(default_factory=dict)
    num_cpus: int | None = None

    @classmethod
    def from_section(cls, section: dict) -> TuneSettings:
        known = {f.name for f in fields(cls)}
        reject_unknown_keys(section, known, "tune")
        values = dict(section)
        scheduler = values.pop("scheduler", {}) or {}
        reject_unknown_keys(scheduler, {f.name for f in fields(SchedulerConfig)}, "tune.scheduler")
        if not values.get("space"):
            raise SystemExit("params.yaml: tune.space is empty: nothing to search")
        settings = cls(scheduler=SchedulerConfig(**scheduler), **values)
        settings.check()
        return settings

    def check(self) -> None:
        checks = {
            "mode": self.mode in ("max", "min"),
            "scheduler.type": self.scheduler.type in ("asha", "fifo"),
            "num_samples": self.num_samples >= 1,
            "max_concurrent_trials": self.max_concurrent_trials >= 1,
            "workers_per_trial": self.workers_per_trial >= 1,
            "trial_cpus": self.trial_cpus > 0,  # Ray refuses a trial of no resources
            "placement_strategy": self.placement_strategy in ("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"),
            "epochs": self.epochs is None or self.epochs >= 1,
        }
        bad = [k for k, ok in checks.items() if not ok]
        if bad:
            raise SystemExit(f"params.yaml: bad tune value(s): {', '.join(f'tune.{k}' for k in bad)}")
        for key, spec in self.space.items():
            kind, values = next(iter(spec.items())) if isinstance(spec, dict) and len(spec) == 1 else (None, None)
            ranged = kind in ("loguniform", "uniform") and isinstance(values, list) and len(values) == 2
            listed = kind in ("choice", "grid") and isinstance(values, list) and len(values) > 0
            if not (ranged or listed):
                raise SystemExit(
                    f"params.yaml: tune.space.{key} must be {{loguniform|uniform: [lo, hi]}} or {{choice|grid: [...]}}"
                )

    @property
    def experiment_dir(self) -> Path:
        """STORAGE_PATH/NAME (run_sweep makes storage_path absolute: trials run in other folders)."""
        return Path(self.storage_path) / self.name


# ---- stage sections ----------------------------------------------------------------------------------------
def set_dotted(tree: dict, key: str, value: Any) -> None:
    """tree['a']['b'] = value for key 'a.b' (missing levels are created)."""
    *parents, leaf = key.split(".")
    node = tree
    for part in parents:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise SystemExit(f"tune: '{key}': '{part}' is not a section")
        node = child
    node[leaf] = value


def with_overrides(section: dict, overrides: dict[str, Any]) -> dict:
    out = copy.deepcopy(section)
    for key, value in overrides.items():
        set_dotted(out, key, value)
    return out


def trial_section(base: dict, settings: TuneSettings, sampled: dict[str, Any], out_dir: Path) -> dict:
    """The section a trial trains: the stage's, with the sampled values, the trial-only overrides and the
    trial's own out_dir."""
    section = with_overrides(base, {**settings.overrides, **sampled})
    if settings.epochs:
        set_dotted(section, "train.epochs", settings.epochs)
    section["out_dir"] = str(out_dir)
    section["device"] = "cuda" if settings.use_gpu else "cpu"
    for key in ("metrics", "plots"):  # the stage's DVC outputs are not the trial's
        section.pop(key, None)
    return section


def check_keys(base: dict, keys: list[str], stage: str) -> None:
    """Every searched or overridden key names a value of the stage: a key of its section, a TrainConfig
    field (train.*) or a model keyword (model_args.*). A typo would otherwise be trained as a no-op."""
    from transpose.engine import TrainConfig

    train_fields = {f.name for f in fields(TrainConfig)}
    for key in keys:
        head, _, rest = key.partition(".")
        node: Any = base
        for part in key.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        if not (node is not None or (head == "train" and rest in train_fields) or (head == "model_args" and rest)):
            raise SystemExit(f"params.yaml: tune: '{key}' is not a key of the '{stage}' section")


def search_space(space: dict[str, dict]) -> dict:
    from ray import tune

    samplers = {
        "loguniform": lambda v: tune.loguniform(*v),
        "uniform": lambda v: tune.uniform(*v),
        "choice": tune.choice,
        "grid": tune.grid_search,
    }
    return {key: samplers[kind](values) for key, spec in space.items() for kind, values in spec.items()}


def tune_name(key: str) -> str:
    """A metric name Tune and MLflow accept everywhere: val/AP -> val_AP."""
    return re.sub(r"[^A-Za-z0-9_]", "_", key)


def tune_metrics(record: dict) -> dict[str, float]:
    return {
        tune_name(k): float(v)
        for k, v in record.items()
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    }


# ---- Ray: the per-worker function and the trial driver -----------------------------------------------------
def train_worker(config: dict) -> None:
    """One Ray Train worker of a trial: the stage's training, reporting each validated epoch on every rank."""
    import ray.train

    from pipelines.train import run_section, train_config

    section = config["section"]
    os.chdir(config["root"])  # the section's relative paths are relative to the project, as in `dvc repro`
    context = ray.train.get_context()
    out_dir = Path(section["out_dir"])
    (out_dir / "workers").mkdir(parents=True, exist_ok=True)
    (out_dir / "workers" / f"rank{context.get_world_rank()}.json").write_text(
        json.dumps({"world_size": context.get_world_size(), "node_ip": ray.util.get_node_ip_address()})
    )
    last_epoch = train_config(section, config["stage"]).epochs
    final: dict = {}

    def on_epoch_end(record: dict) -> None:
        if not any(k.startswith("val/") for k in record):
            return
        if record["epoch"] >= last_epoch:  # reported once final.pth and history.json are written (below)
            final.update(record)
        else:
            ray.train.report(tune_metrics(record))

    run_section(section, config["stage"], on_epoch_end=on_epoch_end, source="tune")
    if not final:  # a trial that had already finished before a restore: its last record
        final.update(json.loads((out_dir / "checkpoints" / "latest.json").read_text())["history"][-1])
    ray.train.report(tune_metrics(final))


@dataclass(frozen=True)
class TrialPlan:
    """What every trial's driver needs (sent to the trial actors with the trainable)."""

    base: dict
    settings: TuneSettings
    root: str  # the project folder: relative paths in the section are relative to it (the same on every node)

    @property
    def trials_dir(self) -> Path:
        return self.settings.experiment_dir / "trials"


def trial_driver(config: dict, plan: TrialPlan) -> None:
    """A Tune trial: a TorchTrainer over `workers_per_trial` workers running `train_worker`."""
    import ray.train
    from ray import tune
    from ray.train.torch import TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    s = plan.settings
    trial_id = tune.get_context().get_trial_id()
    section = trial_section(plan.base, s, config, plan.trials_dir / trial_id)
    resources = {"CPU": s.cpus_per_worker, **({"GPU": s.gpus_per_worker} if s.use_gpu else {})}
    TorchTrainer(
        train_worker,
        train_loop_config={"section": section, "stage": s.stage, "root": plan.root},
        scaling_config=ray.train.ScalingConfig(
            num_workers=s.workers_per_trial,
            use_gpu=s.use_gpu,
            resources_per_worker=resources,
            placement_strategy=s.placement_strategy,
        ),
        run_config=ray.train.RunConfig(
            name=trial_id,
            storage_path=str(s.experiment_dir / "ray_train"),
            callbacks=[TuneReportCallback()],
        ),
    ).fit()


# ---- MLflow ------------------------------------------------------------------------------------------------
def _mlflow_callback_class():
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
    from pipelines.tracking import EXPERIMENT, _flatten, setup_mlflow, tracking_uri

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
    for key, value in _flatten(asdict(settings), prefix="tune").items():
        client.log_param(run.info.run_id, key, value)
    record.parent.mkdir(parents=True, exist_ok=True)
    record.write_text(json.dumps({"run_id": run.info.run_id}) + "\n")
    return run.info.run_id


def finish_sweep_run(run_id: str, best: dict, settings: TuneSettings) -> None:
    import mlflow

    from pipelines.tracking import tracking_uri

    client = mlflow.MlflowClient(tracking_uri())
    client.log_metric(run_id, f"best_{tune_name(settings.metric)}", best["value"])
    client.set_tag(run_id, "transpose.best_trial", best["trial_id"])
    client.set_tag(run_id, "transpose.best_config", json.dumps(best["config"], sort_keys=True))
    client.set_terminated(run_id, "FINISHED")


# ---- the sweep ---------------------------------------------------------------------------------------------
def connect(address: str | None, num_cpus: int | None) -> None:
    import ray

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if address:
        ray.init(address=address)
    else:
        ray.init(num_cpus=num_cpus, include_dashboard=False)
    print(f"Ray: {ray.cluster_resources()} on {len(ray.nodes())} node(s)")


def make_tuner(plan: TrialPlan, parent_run: str, restore: bool):
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
    from ray.tune.search import BasicVariantGenerator

    from pipelines.tracking import EXPERIMENT, tracking_uri

    s = plan.settings
    trainable = tune.with_resources(tune.with_parameters(trial_driver, plan=plan), {"CPU": s.trial_cpus})
    if restore:
        return tune.Tuner.restore(str(s.experiment_dir), trainable=trainable, resume_errored=True)
    epochs = s.epochs or plan.base.get("train", {}).get("epochs", 1)
    scheduler = (
        ASHAScheduler(
            time_attr="epoch",
            max_t=s.scheduler.max_t or epochs,
            grace_period=s.scheduler.grace_period,
            reduction_factor=s.scheduler.reduction_factor,
        )
        if s.scheduler.type == "asha"
        else FIFOScheduler()
    )
    mlflow_callback = _mlflow_callback_class()(
        tracking_uri=tracking_uri(),
        experiment_name=EXPERIMENT,
        tags={"mlflow.parentRunId": parent_run, "transpose.sweep": s.name},
    )
    return tune.Tuner(
        trainable,
        param_space=search_space(s.space),
        tune_config=tune.TuneConfig(
            metric=tune_name(s.metric),
            mode=s.mode,
            scheduler=scheduler,
            num_samples=s.num_samples,
            # the limit goes to the search itself: Tune ignores max_concurrent_trials with a given search_alg
            search_alg=BasicVariantGenerator(random_state=s.seed, max_concurrent=s.max_concurrent_trials),
        ),
        run_config=tune.RunConfig(name=s.name, storage_path=str(s.experiment_dir.parent), callbacks=[mlflow_callback]),
    )


def best_trial(results, settings: TuneSettings) -> dict:
    """The trial with the best value of the metric at any of its reports (ties: the first trial)."""
    metric, sign = tune_name(settings.metric), 1 if settings.mode == "max" else -1
    scored = []
    for result in results:
        frame = result.metrics_dataframe
        if frame is None or metric not in frame or frame[metric].dropna().empty:
            continue
        value = frame[metric].max() if sign > 0 else frame[metric].min()
        scored.append((-sign * float(value), result.metrics["trial_id"], dict(result.config)))
    if not scored:
        raise SystemExit(f"no trial reported {metric}")
    value, trial_id, config = min(scored)
    return {"trial_id": trial_id, "value": -sign * value, "config": config}


def write_best_params(path: Path, base: dict, settings: TuneSettings, best: dict) -> list[str]:
    """{STAGE: the stage section with the best trial's values}; returns the equivalent dvc exp run options."""
    section = with_overrides(base, best["config"])
    set_lines = [f"--set-param {settings.stage}.{k}={v!r}" for k, v in sorted(best["config"].items())]
    header = [
        f"# Best trial {best['trial_id']} of sweep '{settings.name}': {settings.metric} = {best['value']:.6g}",
        f"# Copy this section over params.yaml's '{settings.stage}', or: dvc exp run {' '.join(set_lines)}",
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial")
    tmp.write_text("\n".join(header) + "\n" + yaml.safe_dump({settings.stage: section}, sort_keys=False))
    os.replace(tmp, path)
    return set_lines


def run_sweep(params_file: Path, address: str | None, num_samples: int | None, restore: bool, fresh: bool) -> dict:
    """Run (or resume) the sweep of params_file's `tune:` section; returns the best trial."""
    params = yaml.safe_load(params_file.read_text()) or {}
    if "tune" not in params:
        raise SystemExit(f"{params_file}: no section 'tune'")
    settings = TuneSettings.from_section(params["tune"])
    settings = replace(
        settings,
        storage_path=str(Path(settings.storage_path).resolve()),
        num_samples=num_samples or settings.num_samples,
    )
    if settings.stage not in params:
        raise SystemExit(f"{params_file}: no section '{settings.stage}' (tune.stage)")
    base = params[settings.stage]
    if not base.get("validate", True):
        raise SystemExit(f"{params_file}: {settings.stage}.validate is off: trials need validation metrics")
    check_keys(base, [*settings.space, *settings.overrides], settings.stage)
    if fresh and settings.experiment_dir.exists():
        shutil.rmtree(settings.experiment_dir)

    from ray import tune

    connect(address or os.environ.get("RAY_ADDRESS"), settings.num_cpus)
    resuming = tune.Tuner.can_restore(str(settings.experiment_dir))
    if restore and not resuming:
        raise SystemExit(f"--restore: no sweep to resume in {settings.experiment_dir}")
    print(f"{'resuming' if resuming else 'starting'} sweep {settings.experiment_dir}")
    if resuming and num_samples:
        print("--num-samples is ignored: a resumed sweep keeps its search (--fresh starts a new one)")
    parent = sweep_run(settings)
    plan = TrialPlan(base=base, settings=settings, root=str(Path.cwd()))
    results = make_tuner(plan, parent, resuming).fit()
    errors = [r for r in results if r.error]
    if len(errors) == len(results):
        raise SystemExit(f"every trial failed; the first: {errors[0].error}")
    best = best_trial(results, settings)
    set_lines = write_best_params(Path(settings.best_params_out), base, settings, best)
    finish_sweep_run(parent, best, settings)
    print(f"best trial {best['trial_id']}: {settings.metric} = {best['value']:.6g}, {best['config']}")
    print(f"wrote {settings.best_params_out}; apply with: dvc exp run {' '.join(set_lines)}")
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", type=Path, default=Path("params.yaml"), help="parameter file (tune: section)")
    parser.add_argument("--address", help="Ray cluster to join (default: RAY_ADDRESS, else a local Ray)")
    parser.add_argument("--num-samples", type=int, help="override tune.num_samples (a new sweep only)")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--restore", action="store_true", help="resume the sweep; fail if there is none to resume")
    group.add_argument("--fresh", action="store_true", help="delete the sweep's folder first and start over")
    args = parser.parse_args()
    run_sweep(args.params, args.address, args.num_samples, args.restore, args.fresh)


if __name__ == "__main__":
    main()
