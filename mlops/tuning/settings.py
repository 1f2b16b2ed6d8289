"""A sweep's settings (params.yaml `tune:`), its search space, and the section each trial trains."""

from __future__ import annotations

import copy
import math
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

from transpose.engine import TrainConfig


@dataclass(frozen=True)
class SchedulerConfig:
    type: Literal["asha", "fifo"] = "asha"
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

    def __post_init__(self) -> None:
        checks = {
            "mode": (self.mode in ("max", "min"), "must be max or min"),
            "num_samples": (self.num_samples >= 1, "must be at least 1"),
            "max_concurrent_trials": (self.max_concurrent_trials >= 1, "must be at least 1"),
            "workers_per_trial": (self.workers_per_trial >= 1, "must be at least 1"),
            "cpus_per_worker": (self.cpus_per_worker > 0, "must be positive"),
            "gpus_per_worker": (self.gpus_per_worker >= 0, "must be at least 0"),
            "trial_cpus": (self.trial_cpus > 0, "must be positive (Ray refuses a trial of no resources)"),
            "placement_strategy": (
                self.placement_strategy in ("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"),
                "must be PACK, SPREAD, STRICT_PACK or STRICT_SPREAD",
            ),
            "epochs": (self.epochs is None or self.epochs >= 1, "must be at least 1 (or null)"),
            "space": (bool(self.space), "is empty: nothing to search"),
        }
        for key, (ok, rule) in checks.items():
            if not ok:
                raise ValueError(f"{key}: {rule}, got {getattr(self, key)!r}")
        for key, spec in self.space.items():
            kind, values = next(iter(spec.items())) if isinstance(spec, dict) and len(spec) == 1 else (None, None)
            ranged = kind in ("loguniform", "uniform") and isinstance(values, list) and len(values) == 2
            listed = kind in ("choice", "grid") and isinstance(values, list) and len(values) > 0
            if not (ranged or listed):
                forms = "{loguniform|uniform: [lo, hi]} or {choice|grid: [...]}"
                raise ValueError(f"space: entry '{key}' must be {forms}")

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
            raise ValueError(f"tune: '{key}': '{part}' is not a section")
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
    section["processes"] = settings.workers_per_trial  # batch_size stays per process in a trial
    for key in ("metrics", "plots"):  # the stage's DVC outputs are not the trial's
        section.pop(key, None)
    return section


def check_keys(base: dict, keys: list[str], stage: str) -> None:
    """Every searched or overridden key names a value of the stage: a key of its section, a TrainConfig
    field (train.*) or a model keyword (model_args.*). A typo would otherwise be trained as a no-op."""
    train_fields = {f.name for f in fields(TrainConfig)}
    for key in keys:
        head, _, rest = key.partition(".")
        node: Any = base
        for part in key.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        if not (node is not None or (head == "train" and rest in train_fields) or (head == "model_args" and rest)):
            raise ValueError(f"tune: '{key}' is not a key of the '{stage}' section")


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
