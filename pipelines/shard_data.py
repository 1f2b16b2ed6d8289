"""DVC stage `shard`: COCO and MPII (synthetic or real, laid out as the official releases) -> WebDataset shards.

    python -m pipelines.shard_data      # reads params.yaml `data:` and `shard:`; writes data/shards/{coco,mpii}/

Splits: coco/train (GT boxes, cleaned), coco/val_gt (GT boxes), coco/val_det (the detection file's boxes),
mpii/train, mpii/valid. Training shards store the region the reference's augmentation (and a centre shift up to
`shard.max_shift`) can reach; validation shards store regions without augmentation margins.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

from dataops.augment import AugmentConfig
from dataops.datasets import read_coco_detections, read_coco_keypoints, read_mpii
from dataops.shards import ShardConfig, write_shards
from pipelines.params import require, stage_params
from transpose.keypoints import MPII

OUT = Path("data/shards")


def main() -> None:
    d = stage_params("data")
    if require(d, "data", "source", str) == "synthetic":
        coco, mpii = Path("data/synthetic/coco"), Path("data/synthetic/mpii")
        train_set, val_set = "train", "val"
        det_file = coco / "person_detection_results" / "synthetic_val_detections.json"
    else:
        coco, mpii = Path(require(d, "data", "coco_root", str)), Path(require(d, "data", "mpii_root", str))
        train_set, val_set = require(d, "data", "coco_train_set", str), require(d, "data", "coco_val_set", str)
        det_file = coco / require(d, "data", "coco_detections", str)
    p = stage_params("shard")
    h, w = require(p, "shard", "input_size", list)
    train_cfg = ShardConfig(
        samples_per_shard=require(p, "shard", "samples_per_shard", int),
        store=require(p, "shard", "store", str),
        jpeg_quality=require(p, "shard", "jpeg_quality", int),
        aspect_ratio=w / h,
        workers=require(p, "shard", "workers", int),
        augment=AugmentConfig(shift_factor=float(require(p, "shard", "max_shift", (int, float)))),
    )
    val_cfg = replace(train_cfg, augment=AugmentConfig(enabled=False))
    summary = {}

    def ann(split: str) -> Path:
        return coco / "annotations" / f"person_keypoints_{split}.json"

    for name, (records, report, kset), config in (
        ("train", read_coco_keypoints(ann(train_set), coco / "images" / train_set, w / h), train_cfg),
        ("val_gt", read_coco_keypoints(ann(val_set), coco / "images" / val_set, w / h), val_cfg),
        ("val_det", read_coco_detections(ann(val_set), det_file, coco / "images" / val_set, w / h), val_cfg),
    ):
        manifest = write_shards(records, kset, OUT / "coco", name, config, report)
        summary[f"coco/{name}"] = _line(manifest)
    for name in ("train", "valid"):
        records, report = read_mpii(mpii / "annot" / f"{name}.json", mpii / "images")
        manifest = write_shards(records, MPII, OUT / "mpii", name, train_cfg if name == "train" else val_cfg, report)
        summary[f"mpii/{name}"] = _line(manifest)
    # the ground truth the evaluation needs travels with the shards, whatever the source
    shutil.copy(ann(val_set), OUT / "coco" / "val_annotations.json")
    shutil.copy(mpii / "annot" / "gt_valid.mat", OUT / "mpii" / "gt_valid.mat")
    (OUT / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    for split, line in summary.items():
        print(f"{split:14s} {line}")


def _line(manifest: dict) -> dict:
    return {
        "samples": manifest["samples"],
        "shards": len(manifest["shards"]),
        "MiB": round(manifest["bytes"] / 2**20, 1),
        "skipped": manifest["skipped"]["by_reason"],
    }


if __name__ == "__main__":
    main()
