"""Ray Tune hyperparameter search over a training stage: every trial is the stage's own DeepSpeed training
(the `train_fn` the caller passes: `pipelines.train.run_section`), run by a Ray Train `TorchTrainer` on
`workers_per_trial` processes. Modules: `settings` (the section, the search space, trial sections), `trials`
(the worker function and the trial driver), `tracking` (MLflow runs of the sweep and its trials), `sweep`
(Ray, the Tuner, restore, the best configuration).

    python -m pipelines.tune                        # local Ray, or the cluster in RAY_ADDRESS
    python -m pipelines.tune --address 10.0.0.1:6379 --num-samples 16

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

MLflow (`mlops.tracking`: MLFLOW_TRACKING_URI or the project's sqlite store): one run for the sweep, and
one nested run per trial (its sampled values as params, its reports as metrics; a restored trial continues
its own run). The best trial's value and configuration are logged on the sweep's run.

Cluster: with `--address` or RAY_ADDRESS the sweep joins that Ray cluster (infra/ray/: `ray up` on premises,
KubeRay RayCluster/RayJob); otherwise it starts a local Ray with `num_cpus` CPUs.

DVC: a sweep is not a stage of the DAG (a stage that has never run would show as changed in every
`dvc status`, and a sweep is a search, not a step of the pipeline). Its output, `best_params_out`, is a params
file: copy its section over params.yaml's, or use the `dvc exp run --set-param` lines the sweep prints.
"""

from mlops.tuning.settings import SchedulerConfig, TuneSettings, trial_section
from mlops.tuning.sweep import run_sweep

__all__ = ["SchedulerConfig", "TuneSettings", "run_sweep", "trial_section"]
