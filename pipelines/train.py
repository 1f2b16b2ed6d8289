"""DVC stages `pretrain`, `transfer` and `mpii_scratch`: train one params.yaml section with DeepSpeed.

    python -m pipelines.train --stage pretrain                 # one process
    torchrun --nproc_per_node 2 -m pipelines.train --stage pretrain
    deepspeed --num_gpus 2 --no_ssh --node_rank 0 pipelines/train.py --stage pretrain

What is trained comes from the data and the run it starts from, not from params: the shards' manifest gives
the dataset kind and the keypoint set (the model gets one heatmap per keypoint, the flip test its flip pairs,
the scorer its OKS sigmas), and a section with `init_from` (transfer) takes the architecture and input size
from that run's model card, with a new final layer for its own keypoints. The run's model.json (beside
best.pth) records all of it for the stages after it. Every key, value and input file is checked before the
process group starts.

Elastic resume: a run checkpointed on N processes resumes on M (`torchrun --nproc_per_node M ...` with params
unchanged) when M divides the global batch `processes` x `batch_size`: each process then takes the global batch
/ M, the twin loader (`loader: torch`) resumes at the same global step, ZeRO partitions are merged and re-split.
The DALI loader's position is per process, so a DALI run resumes on its own number of processes only.

Resuming: the same command resumes an interrupted run from its newest complete checkpoint, but only a run of
the same fingerprint: the section (less where outputs go and the loader workers, which change no result), the
shard manifests, the starting weights, the code this stage runs (`mlops.fingerprints.code_fingerprint`) and
the library versions. Anything else trains afresh, and the checkpoints of the other run are moved aside, not
deleted.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import torch

from dataops.augment import AugmentConfig
from dataops.loaders import LoaderConfig, make_loader, make_targets
from dataops.shards import ManifestError, ShardError, ShardManifest, read_manifest, verify_shards
from mlops.fingerprints import code_fingerprint, environment, file_sha256
from mlops.tracking import resumable_run_id, stage_run
from pipelines.params import ParamsError, load_params, parse_section, stage_arguments
from transpose.engine import TrainConfig
from transpose.engine.curves import plot_training_curves
from transpose.engine.distributed import broadcast_object, init_process_group, is_main, local_rank
from transpose.engine.trainer import Trainer
from transpose.engine.validation import validate
from transpose.evaluation.protocols import dataset_kind
from transpose.models import MODELS, ModelCard, checkpoint_path, load_reference_checkpoint, read_card

STAGE_MODULE = "pipelines.train"
NOT_IN_RESULT = ("out_dir", "metrics", "plots", "workers", "profile")  # where outputs go, loader workers, timing


@dataclass(frozen=True)
class TrainSection:
    shards: str  # the dataset's shards folder (its train and validation splits)
    out_dir: str  # checkpoints, best.pth + model.json, history
    model: str | None = None  # a registered variant; with init_from: taken from its card
    image_size: tuple[int, int] | None = None  # (h, w); with init_from: taken from its card
    model_args: dict = field(default_factory=dict)  # any model keyword, e.g. {num_layers: 6}
    init_from: str | None = None  # a trained run (its best.pth and model.json) to start from: transfer
    model_from: str | None = None  # a trained run whose architecture and input size (its card) train from scratch
    val_split: str = "val"
    validate: bool = True
    metrics: str | None = None  # DVC metrics: the best validation's headline metrics
    plots: str | None = None  # DVC image plot: loss and validation curves
    loader: Literal["dali", "torch"] = "dali"
    device: Literal["cpu", "cuda"] = "cpu"
    processes: int = 1  # torchrun processes on this node (dvc.yaml starts that many)
    batch_size: int = 32  # per process
    workers: int = 2
    deepspeed_config: str = "infra/deepspeed/zero0_fp32.json"
    augment: dict = field(default_factory=dict)  # AugmentConfig fields over the reference's
    profile: bool = False  # time every step's phases on CUDA too (synchronising); on CPU they always are
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self) -> None:
        if self.model is not None and self.model not in MODELS:
            raise ValueError(f"model: unknown model {self.model!r}; registered: {', '.join(sorted(MODELS))}")
        if self.init_from and self.model_from:
            raise ValueError("model_from: give init_from (weights and architecture) or model_from, not both")
        if self.image_size is not None and min(self.image_size) < 16:
            raise ValueError(f"image_size: must be [h, w] of at least 16 pixels each, got {list(self.image_size)}")
        for key, low in (("batch_size", 1), ("workers", 0), ("processes", 1)):
            if getattr(self, key) < low:
                raise ValueError(f"{key}: must be at least {low}, got {getattr(self, key)}")


@dataclass(frozen=True)
class TrainPlan:
    """What a section trains, resolved and checked against the data and the starting run."""

    stage: str
    section: TrainSection
    card: ModelCard  # written beside best.pth
    train_data: ShardManifest
    val_data: ShardManifest | None
    augment: AugmentConfig
    ds_config: dict

    @property
    def gate_metric(self) -> str:
        return dataset_kind(self.card.dataset_kind).gate_metric


def plan(section: TrainSection, stage: str) -> TrainPlan:
    """Resolve the model card (data + init_from + section) and check everything a run needs; any problem is a
    ParamsError naming the key or the file."""
    try:
        train_data = read_manifest(section.shards, "train")
        val_data = read_manifest(section.shards, section.val_split) if section.validate else None
    except ManifestError as err:
        raise ParamsError(f"{stage}.shards: {err}") from None
    if val_data is not None:
        _check_same_data(train_data, val_data, stage)
    model, image_size, model_args = _architecture(section, stage)
    try:
        train_data.check_aspect_ratio(image_size, f"params.yaml: {stage}.image_size")
    except ManifestError as err:
        raise ParamsError(str(err)) from None
    augment = augment_config(section.augment, stage, train_data.reach)
    ds_path = Path(section.deepspeed_config)
    try:
        ds_config = json.loads(ds_path.read_text())
    except (OSError, ValueError) as err:
        raise ParamsError(
            f"params.yaml: '{stage}.deepspeed_config' {ds_path}: not a readable JSON file ({err})"
        ) from None
    training = {"stage": stage, "shards": section.shards, "train_manifest_sha256": file_sha256(train_data.path)}
    training.update({k: getattr(section, k) for k in ("init_from", "model_from") if getattr(section, k)})
    card = ModelCard(model, image_size, train_data.keypoints, train_data.dataset_kind, model_args, training)
    try:
        card.build()  # an input size the architecture cannot take fails here, before any process starts
    except ValueError as err:
        raise ParamsError(f"params.yaml: {stage}: {err}") from None
    return TrainPlan(stage, section, card, train_data, val_data, augment, ds_config)


def _check_same_data(train: ShardManifest, val: ShardManifest, stage: str) -> None:
    if (train.dataset_kind, train.keypoints.names) != (val.dataset_kind, val.keypoints.names):
        raise ParamsError(
            f"{stage}: the train shards ({train.path}: {train.dataset_kind}, {train.keypoints.name}) and the "
            f"validation shards ({val.path}: {val.dataset_kind}, {val.keypoints.name}) are not of one dataset"
        )
    if val.ground_truth is None or not val.ground_truth.is_file():
        raise ParamsError(f"{stage}.val_split: {val.path} names no ground truth file beside it: re-shard")


def _architecture(section: TrainSection, stage: str) -> tuple[str, tuple[int, int], dict]:
    """(model, image_size, model_args): the section's, or the card of init_from / model_from (a section that
    restates them must agree with the card)."""
    key, run = ("init_from", section.init_from) if section.init_from else ("model_from", section.model_from)
    if not run:
        missing = [k for k in ("model", "image_size") if getattr(section, k) is None]
        if missing:
            raise ParamsError(
                f"params.yaml: missing key(s) {', '.join(f'{stage}.{k}' for k in missing)} "
                "(or init_from / model_from: a trained run)"
            )
        return section.model, tuple(section.image_size), dict(section.model_args)
    weights = checkpoint_path(run)
    if key == "init_from" and not weights.is_file():
        raise ParamsError(f"params.yaml: '{stage}.init_from' {run}: no {weights.name} there")
    try:
        card = read_card(run)
    except (OSError, ValueError) as err:
        raise ParamsError(f"params.yaml: '{stage}.{key}': {err}") from None
    for name, value, carded in (
        ("model", section.model, card.model),
        ("image_size", section.image_size and tuple(section.image_size), tuple(card.image_size)),
        ("model_args", section.model_args or None, card.model_args),
    ):
        if value is not None and value != carded:
            raise ParamsError(
                f"params.yaml: '{stage}.{name}' is {value!r} but the model card of {run} says {carded!r}: "
                f"drop {stage}.{name} (the card states it), or start from another run"
            )
    return card.model, tuple(card.image_size), dict(card.model_args)


def augment_config(values: dict, stage: str, reach: AugmentConfig | None) -> AugmentConfig:
    """The section's `augment:` over the reference's augmentation. `reach` is what the training shards' regions
    were stored for (None: whole images): a larger scale or shift would read past them."""
    config = parse_section(AugmentConfig, values, f"{stage}.augment", exclude=("enabled",))
    beyond = config.reaches_beyond(reach) if reach is not None else []
    if beyond:
        stored = ", ".join(f"{name} {getattr(reach, name)}" for name in beyond)
        raise ParamsError(
            f"params.yaml: {stage}.augment {', '.join(beyond)} above what the shards were cut for ({stored}) "
            "would crop outside the stored person regions: lower it, or reshard with a larger shard.max_shift "
            "(shift) or shard.store: image"
        )
    return config


def run_identity(p: TrainPlan) -> dict:
    """What a checkpoint must come from to be resumed (see the module docstring)."""
    section = {k: v for k, v in asdict(p.section).items() if k not in NOT_IN_RESULT}
    section["train"].pop("nonfinite_loss")  # switching to skip after a NaN stop resumes, not restarts
    identity = {
        "section": section,
        "card": p.card.to_dict(),
        "data": {m.split: file_sha256(m.path) for m in (p.train_data, p.val_data) if m is not None},
        "deepspeed_config": p.ds_config,
        "code": code_fingerprint([STAGE_MODULE]),
        "environment": environment(),
    }
    if p.section.init_from:
        identity["init_weights"] = file_sha256(checkpoint_path(p.section.init_from))
    return identity


def cpu_threads_per_process() -> int:
    """OMP_NUM_THREADS when set, else the cores shared out among this node's processes (torchrun sets
    LOCAL_WORLD_SIZE), so 2 processes on 2 cores use 1 thread each instead of oversubscribing."""
    if os.environ.get("OMP_NUM_THREADS"):
        return max(1, int(os.environ["OMP_NUM_THREADS"]))
    return max(1, (os.cpu_count() or 1) // int(os.environ.get("LOCAL_WORLD_SIZE", "1")))


def use_environment_extension_cache() -> None:
    """DeepSpeed JIT-builds a CPU communication op when it sets up processes; a build cache per Python
    environment (unless TORCH_EXTENSIONS_DIR is set) keeps two venvs on one machine from rebuilding it in turn."""
    os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(Path(sys.prefix) / "torch_extensions"))


def prebuild_deepspeed_ops() -> None:
    """Build that op now (scripts/setup.sh calls this), so that the first training does not wait for the compiler
    (about 40 s on 2 cores); nothing is built where DeepSpeed's accelerator has no such op."""
    use_environment_extension_cache()
    from deepspeed.comm.torch import build_shm_op

    build_shm_op()


def per_process_batch(section: TrainSection, world: int, stage: str) -> int:
    """The batch each of `world` processes takes so that the global batch stays `processes` x `batch_size`:
    the section's batch_size when the run has the processes it names, else the same global batch re-split
    (a run resumed elastically on another number of processes; an error if it does not divide)."""
    global_batch = section.processes * section.batch_size
    if world == section.processes:
        return section.batch_size
    if global_batch % world:
        raise ParamsError(
            f"params.yaml: {stage}: the global batch {section.processes} x {section.batch_size} = {global_batch} "
            f"does not split over {world} processes: run with a number of processes that divides it"
        )
    if is_main():
        print(f"{stage}: {world} processes instead of {section.processes}: {global_batch // world} samples per "
              f"process keep the global batch of {global_batch}")  # fmt: skip
    return global_batch // world


def verify_data(p: TrainPlan) -> None:
    """The main process checks the shards against their manifests (cached, so a restart costs nothing); every
    process stops with the same ShardError when they do not match."""
    problem = None
    if is_main():
        try:
            for manifest in (p.train_data, p.val_data):
                if manifest is not None:
                    verify_shards(p.section.shards, manifest.split)
        except Exception as err:  # any failure here must reach every rank, or the others wait in the broadcast
            problem = f"{p.stage}: {err}" if isinstance(err, (ShardError, ManifestError)) else f"{p.stage}: {err!r}"
    problem = broadcast_object(problem)
    if problem:
        raise ShardError(problem)


def build_model(p: TrainPlan) -> torch.nn.Module:
    """The card's architecture, seeded alike in every process, from init_from's weights with a new final layer
    for the data's keypoints when they differ."""
    torch.manual_seed(p.section.train.seed)
    if not p.section.init_from:
        return p.card.build()
    init = read_card(p.section.init_from)
    model = init.build()
    load_reference_checkpoint(model, checkpoint_path(p.section.init_from))
    if init.keypoints.names != p.card.keypoints.names:
        model.reset_head(p.card.num_keypoints)  # transfer: a new d x K final layer
    return model


def train(p: TrainPlan, tracker=None, on_epoch_end=None) -> dict:
    """Train the plan (resuming a run of the same fingerprint); returns the best validation record."""
    s, config = p.section, p.section.train
    model = build_model(p)
    rank, world = init_process_group(s.device)
    verify_data(p)
    if s.device == "cpu":
        torch.set_num_threads(cpu_threads_per_process())
    if rank == 0:
        p.card.write(Path(s.out_dir) / "model.json")
    codec = model.data_config.codec(config.sigma)
    keypoints = p.card.keypoints
    gpu = local_rank() if s.device == "cuda" else None
    batch_size = per_process_batch(s, world, p.stage)

    def loader(split: str, augment: AugmentConfig | None):
        cfg = LoaderConfig(
            input_size=tuple(p.card.image_size),
            batch_size=batch_size,
            augment=augment or AugmentConfig(enabled=False),
            shuffle=augment is not None,
            seed=config.seed,
            workers=s.workers,
        )
        return make_loader(s.shards, split, cfg, rank, world, s.loader, s.device, gpu)

    def prepare(batch: dict, device: torch.device):
        batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
        targets, weights, _ = make_targets(batch, keypoints, codec)
        return batch["image"], targets, weights

    run_validation = None
    if p.val_data is not None:
        scorer = dataset_kind(p.card.dataset_kind).scorer(p.val_data.ground_truth, keypoints)

        def run_validation(module):
            device = next(module.parameters()).device
            return validate(module, loader(s.val_split, None), scorer, keypoints, codec, device, config.flip_test)

    trainer = Trainer(
        model,
        loader("train", p.augment),
        prepare,
        config,
        s.out_dir,
        p.ds_config,
        validate=run_validation,
        gate_metric=p.gate_metric,
        tracker=tracker,
        device=s.device,
        fingerprint=json.dumps(run_identity(p), sort_keys=True),
        on_epoch_end=on_epoch_end,
        profile=s.profile,
    )
    return trainer.fit()


def run_section(values: dict, stage: str, tracker=None, on_epoch_end=None) -> dict:
    """Train from a section dict (params.yaml's, or a Ray Tune trial's with the sampled values); `on_epoch_end`
    (every rank, after each epoch's checkpoint) is how Tune hears of validated epochs."""
    use_environment_extension_cache()
    return train(plan(parse_section(TrainSection, values, stage), stage), tracker, on_epoch_end)


def write_dvc_outputs(p: TrainPlan, best: dict) -> None:
    """DVC metrics (the best validation's headline metrics) and the curves figure, where the section names them."""
    s = p.section
    history = json.loads((Path(s.out_dir) / "history.json").read_text())
    if s.metrics:
        headline = dataset_kind(p.card.dataset_kind).headline(best.get("metrics", {}))
        path = Path(s.metrics)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"best_epoch": best.get("epoch"), **headline}, indent=2) + "\n")
    if s.plots:
        title = f"{p.stage}: {p.card.model} on {s.shards} (validation: {s.val_split})"
        plot_training_curves({p.stage: history}, p.gate_metric, s.plots, title)


def log_run(p: TrainPlan, tracker) -> None:
    """best.pth, model.json, history and the curves as artifacts; the best model with its signature; and
    mlflow_run.json (the run and the logged model, for the promote stage)."""
    out_dir = Path(p.section.out_dir)
    for path in (out_dir / "best.pth", out_dir / "model.json", out_dir / "history.json"):
        if path.is_file():
            tracker.log_artifact(path)
    if p.section.plots and Path(p.section.plots).is_file():
        tracker.log_artifact(p.section.plots, "figures")
    if (out_dir / "best.pth").is_file():
        from mlops.serving.packaging import log_serving_model  # MLflow's pyfunc: loaded only when tracking

        model_uri = tracker.log_model(lambda run_id: log_serving_model(out_dir, run_id=run_id))
        print(f"logged model {model_uri}")
        tracker.write_run_info(out_dir / "mlflow_run.json", model_uri)


def main() -> None:
    args = stage_arguments(__doc__, stage=None)
    args.add_argument("--stage", required=True, help="params.yaml section: pretrain, transfer, mpii_scratch")
    args.add_argument("--local_rank", type=int, default=None, help=argparse.SUPPRESS)  # the deepspeed launcher's
    args = args.parse_args()
    use_environment_extension_cache()
    values = load_params(args.params).get(args.stage)
    if not isinstance(values, dict):
        raise ParamsError(f"{args.params}: no section '{args.stage}:'")
    p = plan(parse_section(TrainSection, values, args.stage), args.stage)  # every check before processes start
    init_process_group(p.section.device)
    tracked = is_main() and not args.no_mlflow
    run_id = None
    if tracked:  # a resumed run continues its MLflow run
        fingerprint = json.dumps(run_identity(p), sort_keys=True)
        run_id = resumable_run_id(Path(p.section.out_dir) / "checkpoints", fingerprint)
    with stage_run(args.stage, values, enabled=tracked, run_id=run_id, short_attempts=True) as tracker:
        best = train(p, tracker)
        if is_main():
            write_dvc_outputs(p, best)
            if tracker is not None:
                log_run(p, tracker)
    if is_main():
        print(json.dumps({"best": best}, indent=1))


if __name__ == "__main__":
    main()
