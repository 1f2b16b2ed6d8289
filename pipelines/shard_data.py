"""DVC stage `shard`: every dataset (the synthetic ones, or `data.datasets` with source: real) -> WebDataset shards.

    python -m pipelines.shard_data      # reads params.yaml `data:` and `shard:`; writes data/shards/NAME/

Splits per dataset (`dataops.datasets.sources`): train, val (GT boxes) and, for a COCO-format dataset with a
detections file, val_det. Each split's manifest records the dataset kind and the keypoint set read from the
dataset's own file, and for an evaluation split the ground truth it is scored against, copied beside the
shards. Training shards store the region the reference's augmentation (and a shift up to shard.max_shift) can
reach; evaluation shards store regions without augmentation margins. Every input file of every dataset, and
every dataset's keypoint set, is checked before anything is written.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

from dataops.augment import AugmentConfig
from dataops.datasets.sources import DatasetSource, read_sources
from dataops.shards import ShardConfig, write_shards
from mlops.tracking import stage_run
from pipelines.data import SOURCES_FILE, SYNTHETIC, DataSection
from pipelines.params import load_params, parse_section, stage_arguments

OUT = Path("data/shards")


def dataset_sources(data: DataSection) -> list[DatasetSource]:
    """The datasets to shard: what make_synthetic wrote (its sources.json), or `data.datasets`."""
    try:
        if data.source == "synthetic":
            path = SYNTHETIC / SOURCES_FILE
            if not path.is_file():
                raise SystemExit(f"{path} is missing: run the make_synthetic stage first (dvc repro)")
            return read_sources(json.loads(path.read_text()), str(path), base=SYNTHETIC)
        return read_sources(data.datasets, "data.datasets")
    except ValueError as err:
        raise SystemExit(f"params.yaml: {err}") from None


@dataclass(frozen=True)
class ShardSection:
    aspect_ratio: float = 0.75  # w / h of the model input the crops are cut for (192/256 in the paper)
    samples_per_shard: int = 256
    store: Literal["region", "image"] = "region"  # the person's reachable region (JPEG q) or the original bytes
    jpeg_quality: int = 95
    max_shift: float = 0.0  # largest augment.shift_factor training may use: stored regions grow by it
    workers: int = 2

    def __post_init__(self) -> None:
        checks = {
            "aspect_ratio": (0.1 <= self.aspect_ratio <= 10, "must be in [0.1, 10]"),
            "samples_per_shard": (self.samples_per_shard >= 1, "must be at least 1"),
            "jpeg_quality": (1 <= self.jpeg_quality <= 100, "must be in [1, 100]"),
            "max_shift": (0 <= self.max_shift < 1, "must be in [0, 1)"),
            "workers": (self.workers >= 1, "must be at least 1"),
        }
        for key, (ok, rule) in checks.items():
            if not ok:
                raise ValueError(f"{key}: {rule}, got {getattr(self, key)!r}")

    def config(self, training: bool) -> ShardConfig:
        augment = AugmentConfig(shift_factor=self.max_shift) if training else AugmentConfig(enabled=False)
        return ShardConfig(
            samples_per_shard=self.samples_per_shard,
            store=self.store,
            jpeg_quality=self.jpeg_quality,
            aspect_ratio=self.aspect_ratio,
            workers=self.workers,
            augment=augment,
        )


def check_sources(sources: list[DatasetSource]) -> None:
    """Every input file is there and every dataset's keypoint set is usable, before any shard is written."""
    missing = [line for source in sources for line in source.missing_files()]
    if missing:
        raise SystemExit("dataset files not found (fix data.datasets in params.yaml):\n  " + "\n  ".join(missing))
    for source in sources:
        try:
            source.keypoints()
        except (ValueError, FileNotFoundError) as err:
            raise SystemExit(f"dataset {source.name}: {err}") from None


def shard_source(source: DatasetSource, section: ShardSection) -> dict:
    """Write every split of one dataset; returns a one-line summary per split."""
    summary = {}
    train_config = section.config(training=True)
    val_config = replace(train_config, augment=AugmentConfig(enabled=False))
    for split in source.splits(section.aspect_ratio):
        manifest = write_shards(
            split.records,
            split.keypoints,
            OUT / source.name,
            split.name,
            train_config if split.training else val_config,
            split.report,
            dataset_kind=source.kind,
            ground_truth=split.ground_truth,
        )
        summary[f"{source.name}/{split.name}"] = {
            "samples": manifest["samples"],
            "shards": len(manifest["shards"]),
            "MiB": round(manifest["bytes"] / 2**20, 1),
            "keypoints": f"{split.keypoints.name} ({split.keypoints.num_keypoints})",
            "skipped": manifest["skipped"]["by_reason"],
        }
    return summary


def main() -> None:
    args = stage_arguments(__doc__).parse_args()
    params = load_params(args.params)
    data = parse_section(DataSection, params.get("data"), "data")
    section = parse_section(ShardSection, params.get("shard"), "shard")
    sources = dataset_sources(data)
    check_sources(sources)
    tracked = {"data": params.get("data"), "shard": params.get("shard")}
    with stage_run("shard", tracked, enabled=not args.no_mlflow) as tracker:
        summary = {}
        for source in sources:
            summary.update(shard_source(source, section))
        OUT.mkdir(parents=True, exist_ok=True)
        (OUT / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        for split, line in summary.items():
            print(f"{split:14s} {line}")
        if tracker is not None:
            counts = {f"{split}/samples": float(line["samples"]) for split, line in summary.items()}
            counts.update({f"{split}/skipped": float(sum(line["skipped"].values())) for split, line in summary.items()})
            tracker.log_metrics(counts, step=0)
            tracker.log_artifact(OUT / "summary.json")


if __name__ == "__main__":
    main()
