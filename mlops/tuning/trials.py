"""The Ray side of a trial: the per-worker function (the stage's own DeepSpeed training) and the trial driver
that fits a Ray Train TorchTrainer over its workers."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from mlops.tuning.settings import TuneSettings, trial_section, tune_metrics
from transpose.engine import TrainConfig


def train_worker(config: dict) -> None:
    """One Ray Train worker of a trial: the stage's training, reporting each validated epoch on every rank."""
    import ray.train

    section, plan = config["section"], config["plan"]
    os.chdir(plan.root)  # the section's relative paths are relative to the project, as in `dvc repro`
    context = ray.train.get_context()
    out_dir = Path(section["out_dir"])
    (out_dir / "workers").mkdir(parents=True, exist_ok=True)
    (out_dir / "workers" / f"rank{context.get_world_rank()}.json").write_text(
        json.dumps({"world_size": context.get_world_size(), "node_ip": ray.util.get_node_ip_address()})
    )
    last_epoch = int(section.get("train", {}).get("epochs", TrainConfig().epochs))
    final: dict = {}

    def on_epoch_end(record: dict) -> None:
        if not any(k.startswith("val/") for k in record):
            return
        if record["epoch"] >= last_epoch:  # reported once final.pth and history.json are written (below)
            final.update(record)
        else:
            ray.train.report(tune_metrics(record))

    plan.train_fn(section, plan.settings.stage, on_epoch_end=on_epoch_end)
    if not final:  # a trial that had already finished before a restore: its last record
        final.update(json.loads((out_dir / "checkpoints" / "latest.json").read_text())["history"][-1])
    ray.train.report(tune_metrics(final))


@dataclass(frozen=True)
class TrialPlan:
    """What every trial's driver needs (sent to the trial actors with the trainable)."""

    base: dict
    settings: TuneSettings
    root: str  # the project folder: relative paths in the section are relative to it (the same on every node)
    train_fn: Callable  # train_fn(section, stage, on_epoch_end=...): the stage's training (pipelines.train)

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
        train_loop_config={"section": section, "plan": plan},
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
