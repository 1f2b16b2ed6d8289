"""Train one stage of the DAG (COCO pretraining or MPII transfer) with DeepSpeed; rerunning resumes.

    python -m pipelines.train --stage pretrain                 # one process
    torchrun --nproc_per_node 2 -m pipelines.train --stage pretrain
    deepspeed --num_gpus 2 --no_ssh --node_rank 0 pipelines/train.py --stage pretrain

Reads params.yaml section `STAGE` (and `--params` for another file). Keys: model, model_args (any model
keyword, e.g. {num_layers: 6} for the Table 7 depths), image_size, num_keypoints,
dataset (coco|mpii), shards, out_dir, loader (dali|torch), device (cpu|cuda), batch_size, workers,
deepspeed_config, init_from (a checkpoint to start from; with reset_head for transfer), val_split, and the
TrainConfig fields under `train:`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import fields
from pathlib import Path

import torch
import yaml

from dataops.augment import AugmentConfig
from dataops.loaders import LoaderConfig, make_targets
from dataops.loaders.dali_loader import DaliLoader
from dataops.loaders.torch_loader import TwinLoader
from dataops.shards import stored_reach
from pipelines.params import reject_unknown_keys
from pipelines.registry import file_sha256
from pipelines.tracking import stage_run
from transpose.engine import TrainConfig
from transpose.engine.distributed import local_rank
from transpose.engine.trainer import Trainer
from transpose.engine.validation import coco_scorer, mpii_scorer, validate
from transpose.evaluation import load_coco_ground_truth, load_mpii_ground_truth
from transpose.keypoints import COCO, MPII
from transpose.models import create_model, load_model, load_reference_checkpoint
from transpose.models.card import CARD_NAME, ModelCard


def train_config(section: dict, stage: str) -> TrainConfig:
    known = {f.name for f in fields(TrainConfig)}
    values = section.get("train", {})
    reject_unknown_keys(values, known, f"{stage}.train")
    try:
        return TrainConfig(**values)
    except (TypeError, ValueError) as err:
        raise SystemExit(f"params.yaml: {stage}.train: {err}") from None


REFERENCE_REACH = AugmentConfig()  # what shards store by default (frozen)


def augment_config(
    p: dict, training: bool, stage: str = "STAGE", reach: AugmentConfig | None = REFERENCE_REACH
) -> AugmentConfig:
    """The section's `augment:` overrides of the reference's augmentation (training only). `reach` is what the
    training shards' regions were stored for (`stored_reach`; None for whole images): a larger scale or
    shift would read past them."""
    if not training:
        return AugmentConfig(enabled=False)
    values = dict(p.get("augment") or {})
    known = {f.name for f in fields(AugmentConfig)} - {"enabled"}
    reject_unknown_keys(values, known, f"{stage}.augment")
    config = AugmentConfig(**values)
    beyond = config.reaches_beyond(reach) if reach is not None else []
    if beyond:
        stored = ", ".join(f"{name} {getattr(reach, name)}" for name in beyond)
        raise SystemExit(
            f"params.yaml: {stage}.augment {', '.join(beyond)} above what the shards were cut for ({stored}) "
            "would crop outside the stored person regions: lower it, or reshard with a larger shard.max_shift "
            "(shift) or shard.store: image"
        )
    return config


def build_loader(p: dict, split: str, keypoint_set, rank: int, world: int, augment: AugmentConfig | None):
    """The split's loader over this rank's share of the shards: shuffled and augmented for training, or in
    order and unaugmented for evaluation (`augment` None)."""
    h, w = p["image_size"]
    config = LoaderConfig(
        input_size=(h, w),
        batch_size=p["batch_size"],
        augment=augment or AugmentConfig(enabled=False),
        keypoint_set=keypoint_set,
        shuffle=augment is not None,
        seed=p.get("train", {}).get("seed", 22),
        workers=p.get("workers", 2),
    )
    shards = Path(p["shards"])
    if p.get("loader", "dali") == "dali":
        device = "gpu" if p.get("device", "cpu").startswith("cuda") else "cpu"
        gpu = local_rank() if device == "gpu" else None  # the CUDA index as this process sees it
        return DaliLoader(shards, split, config, rank, world, device=device, device_id=gpu)
    return TwinLoader(shards, split, config, rank, world)


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


def run(stage: str, params_file: Path = Path("params.yaml"), tracker=None) -> dict:
    """Train the params.yaml section `stage`; returns the best validation record."""
    params = yaml.safe_load(params_file.read_text())
    if stage not in params:
        raise SystemExit(f"{params_file}: no section '{stage}'")
    return run_section(params[stage], stage, tracker, source=str(params_file))


def run_section(p: dict, stage: str, tracker=None, on_epoch_end=None, source: str = "params.yaml") -> dict:
    """Train from the section `stage` (a dict with the keys above); errors name `source` and the key.
    Ray Tune trials call this with a section whose values the search space overrides, and with
    `on_epoch_end(record)`, which every rank calls after each epoch's checkpoint (pipelines/tune.py)."""
    use_environment_extension_cache()
    missing = [k for k in ("model", "image_size", "dataset", "shards", "out_dir", "batch_size") if k not in p]
    if missing:
        raise SystemExit(f"{source}: missing key(s) {', '.join(f'{stage}.{k}' for k in missing)}")
    config = train_config(p, stage)
    augment = augment_config(p, training=True, stage=stage, reach=stored_reach(p["shards"], "train"))
    keypoint_set = COCO if p["dataset"] == "coco" else MPII
    torch.manual_seed(config.seed)  # the same initial weights in every process and every run
    model = create_model(p["model"], num_keypoints=17, image_size=tuple(p["image_size"]), **p.get("model_args", {}))
    if p.get("init_from"):
        load_reference_checkpoint(model, p["init_from"])
    if model.num_keypoints != keypoint_set.num_keypoints:
        model.reset_head(keypoint_set.num_keypoints)  # transfer: a new d x K final layer
    from transpose.engine.distributed import init_process_group

    rank, world = init_process_group(p.get("device", "cpu"))
    if p.get("device", "cpu") == "cpu":
        torch.set_num_threads(cpu_threads_per_process())
    if rank == 0:  # what inference and the registry need to rebuild best.pth
        ModelCard(
            p["model"], keypoint_set.num_keypoints, tuple(p["image_size"]), p.get("model_args", {}), p["dataset"]
        ).write(Path(p["out_dir"]) / CARD_NAME)
    train_loader = build_loader(p, "train", keypoint_set, rank, world, augment)
    val_split = p.get("val_split", "val_det" if p["dataset"] == "coco" else "valid")
    if not p.get("validate", True):
        scorer = None
    elif p["dataset"] == "coco":
        scorer = coco_scorer(load_coco_ground_truth(p["val_annotations"]))
    else:
        scorer = mpii_scorer(load_mpii_ground_truth(p["val_annotations"]))
    input_size = tuple(p["image_size"])

    def prepare(batch: dict, device: torch.device):
        batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
        targets, weights, _ = make_targets(batch, keypoint_set, input_size, config.sigma)
        return batch["image"], targets, weights

    def run_validation(module):
        loader = build_loader(p, val_split, keypoint_set, rank, world, augment=None)
        return validate(
            module, loader, scorer, keypoint_set, input_size, next(module.parameters()).device, config.flip_test
        )

    ds_config = json.loads(Path(p.get("deepspeed_config", "infra/deepspeed/zero0_fp32.json")).read_text())
    trainer = Trainer(
        model,
        train_loader,
        prepare,
        config,
        p["out_dir"],
        ds_config,
        validate=run_validation if p.get("validate", True) else None,
        gate_metric="AP" if p["dataset"] == "coco" else "PCKh",
        tracker=tracker,
        device=p.get("device", "cpu"),
        fingerprint=run_fingerprint(p, val_split),
        on_epoch_end=on_epoch_end,
    )
    return trainer.fit()


def run_fingerprint(p: dict, val_split: str) -> str:
    """What a checkpoint must come from to be resumed: the same section (less what does not change the result),
    the same training and validation shards (their manifests) and the same starting weights (`init_from`), so
    that a stage DVC reruns because its data or its pretrained model changed starts afresh instead of resuming
    the finished run."""
    identity = {k: v for k, v in p.items() if k not in ("workers", "metrics", "plots")}
    for split in ("train", val_split):
        manifest = Path(p["shards"]) / f"{split}-manifest.json"
        identity[f"shards/{split}"] = file_sha256(manifest) if manifest.is_file() else None
    if p.get("init_from"):
        identity["init_weights"] = file_sha256(Path(p["init_from"]))
    return json.dumps(identity, sort_keys=True)


def write_dvc_outputs(section: dict, best: dict) -> None:
    """DVC metrics (the best validation metrics) and plots (per-epoch loss and metrics), where the section
    names them (`metrics:`, `plots:`)."""
    history = json.loads((Path(section["out_dir"]) / "history.json").read_text())
    if section.get("metrics"):
        path = Path(section["metrics"])
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"best_epoch": best.get("epoch"), **best.get("metrics", {})}, indent=2) + "\n")
    if section.get("plots"):
        keys = sorted({k for r in history for k in r if k != "epoch"})
        rows = [",".join(["epoch", *(k.replace("/", "_") for k in keys)])]
        rows += [",".join([str(r["epoch"]), *(f"{r[k]:.6g}" if k in r else "" for k in keys)]) for r in history]
        path = Path(section["plots"])
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("\n".join(rows) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stage", required=True, help="params.yaml section, e.g. pretrain or transfer")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--no-mlflow", action="store_true", help="do not record the run in MLflow")
    parser.add_argument("--local_rank", type=int, default=None, help=argparse.SUPPRESS)  # the deepspeed launcher's
    args = parser.parse_args()
    params = yaml.safe_load(args.params.read_text())
    section = params.get(args.stage, {})
    from transpose.engine.distributed import init_process_group, is_main

    use_environment_extension_cache()
    init_process_group(section.get("device", "cpu"))
    with stage_run(args.stage, section, enabled=is_main() and not args.no_mlflow) as tracker:
        best = run(args.stage, args.params, tracker=tracker)
        if is_main():
            write_dvc_outputs(section, best)
            out_dir = Path(section["out_dir"])
            best_path = out_dir / "best.pth"
            if tracker is not None:
                for path in (best_path, out_dir / CARD_NAME, out_dir / "history.json"):
                    if path.is_file():
                        tracker.log_artifact(path)
                if best_path.is_file():
                    model_uri = tracker.log_model(load_model(best_path), tuple(section["image_size"]))
                    print(f"logged model {model_uri}")
                    tracker.write_run_info(out_dir / "mlflow_run.json", model_uri)
    if is_main():
        print(json.dumps({"best": best}, indent=1))


if __name__ == "__main__":
    main()
