"""Running (or resuming) a sweep on a local Ray or a cluster, and writing the best configuration."""

from __future__ import annotations

import os
import shutil
from dataclasses import replace
from pathlib import Path

import yaml

from mlops.tuning.settings import TuneSettings, check_keys, search_space, tune_name, with_overrides
from mlops.tuning.tracking import finish_sweep_run, mlflow_callback_class, sweep_run
from mlops.tuning.trials import TrialPlan, trial_driver


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

    from mlops.tracking import EXPERIMENT, tracking_uri

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
    mlflow_callback = mlflow_callback_class()(
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
        raise RuntimeError(f"no trial reported {metric}")
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


def run_sweep(
    settings: TuneSettings,
    base: dict,
    train_fn,
    address: str | None = None,
    num_samples: int | None = None,
    restore: bool = False,
    fresh: bool = False,
) -> dict:
    """Run (or resume) the sweep over the stage section `base`, every trial training with `train_fn`; returns
    the best trial."""
    settings = replace(
        settings,
        storage_path=str(Path(settings.storage_path).resolve()),
        num_samples=num_samples or settings.num_samples,
    )
    if not base.get("validate", True):
        raise ValueError(f"{settings.stage}.validate is off: trials need validation metrics")
    check_keys(base, [*settings.space, *settings.overrides], settings.stage)
    if fresh and settings.experiment_dir.exists():
        shutil.rmtree(settings.experiment_dir)

    from ray import tune

    connect(address or os.environ.get("RAY_ADDRESS"), settings.num_cpus)
    resuming = tune.Tuner.can_restore(str(settings.experiment_dir))
    if restore and not resuming:
        raise ValueError(f"--restore: no sweep to resume in {settings.experiment_dir}")
    print(f"{'resuming' if resuming else 'starting'} sweep {settings.experiment_dir}")
    if resuming and num_samples:
        print("--num-samples is ignored: a resumed sweep keeps its search (--fresh starts a new one)")
    parent = sweep_run(settings)
    plan = TrialPlan(base=base, settings=settings, root=str(Path.cwd()), train_fn=train_fn)
    results = make_tuner(plan, parent, resuming).fit()
    errors = [r for r in results if r.error]
    if len(errors) == len(results):
        raise RuntimeError(f"every trial failed; the first: {errors[0].error}")
    best = best_trial(results, settings)
    set_lines = write_best_params(Path(settings.best_params_out), base, settings, best)
    finish_sweep_run(parent, best, settings)
    print(f"best trial {best['trial_id']}: {settings.metric} = {best['value']:.6g}, {best['config']}")
    print(f"wrote {settings.best_params_out}; apply with: dvc exp run {' '.join(set_lines)}")
    return best
