"""DVC stage `make_synthetic`: the embedded default dataset, in the official COCO and MPII layouts.

    python -m pipelines.make_synthetic     # reads params.yaml `data.source` and `synthetic:`; writes data/synthetic/

With data.source = "real" it writes only a note (the shard stage then reads the real roots).
"""

from __future__ import annotations

import shutil
from dataclasses import fields
from pathlib import Path

from dataops.synthetic import SyntheticConfig, generate
from pipelines.params import reject_unknown_keys, require, stage_params

OUT = Path("data/synthetic")


def scene_overrides(scene: dict) -> dict:
    """`synthetic.scene` -> SyntheticConfig keyword arguments (how hard the pictures are: person sizes, facing,
    poses, occluders, clutter, truncation); a key that is not a field of SyntheticConfig stops the stage."""
    known = {f.name for f in fields(SyntheticConfig)} - {"seed", "coco_train", "coco_val", "mpii_train", "mpii_valid"}
    reject_unknown_keys(scene, known, "synthetic.scene")
    out = {}
    for key, value in scene.items():
        if isinstance(value, dict):  # pose_weights: {stand: 0.25, ...}
            value = tuple((str(k), float(v)) for k, v in value.items())
        elif isinstance(value, list):
            value = tuple(value)
        out[key] = value
    return out


def main() -> None:
    source = require(stage_params("data"), "data", "source", str)
    if source not in ("synthetic", "real"):
        raise SystemExit(f"params.yaml: 'data.source' must be 'synthetic' or 'real', got {source!r}")
    shutil.rmtree(OUT, ignore_errors=True)
    OUT.mkdir(parents=True)
    if source == "real":
        (OUT / "SKIPPED.txt").write_text("data.source is 'real': no synthetic data made\n")
        print("data.source is 'real': make_synthetic skipped")
        return
    p = stage_params("synthetic")
    config = SyntheticConfig(
        seed=require(p, "synthetic", "seed", int),
        coco_train=require(p, "synthetic", "coco_train_images", int),
        coco_val=require(p, "synthetic", "coco_val_images", int),
        mpii_train=require(p, "synthetic", "mpii_train_images", int),
        mpii_valid=require(p, "synthetic", "mpii_valid_images", int),
        image_size=(require(p, "synthetic", "image_width", int), require(p, "synthetic", "image_height", int)),
        **scene_overrides(p.get("scene") or {}),
    )
    generate(config, OUT, workers=require(p, "synthetic", "workers", int))


if __name__ == "__main__":
    main()
