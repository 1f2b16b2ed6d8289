"""A small synthetic COCO + MPII set, generated, sharded and read back through both loaders."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from dataops.augment import AugmentConfig
from dataops.datasets import read_coco_detections, read_coco_keypoints, read_mpii
from dataops.loaders import LoaderConfig, crop_joints, make_targets
from dataops.loaders.dali_loader import DaliLoader
from dataops.loaders.torch_loader import TwinLoader
from dataops.shards import ShardConfig, write_shards
from dataops.synthetic import SyntheticConfig, generate
from transpose.codec import HeatmapCodec
from transpose.keypoints import COCO, MPII

CODEC = HeatmapCodec(input_size=(96, 128), heatmap_size=(24, 32))  # a 128x96 model's


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synthetic")
    generate(
        SyntheticConfig(seed=5, coco_train=24, coco_val=6, mpii_train=10, mpii_valid=4), out, workers=1, progress=False
    )
    coco = out / "coco"
    records, report, kset = read_coco_keypoints(
        coco / "annotations" / "person_keypoints_train.json", coco / "images" / "train"
    )
    write_shards(
        records, kset, out / "shards", "coco_train", ShardConfig(samples_per_shard=16, workers=1), report, False
    )
    dets, report, _ = read_coco_detections(
        coco / "annotations" / "person_keypoints_val.json",
        coco / "person_detection_results" / "synthetic_val_detections.json",
        coco / "images" / "val",
    )
    write_shards(dets, kset, out / "shards", "coco_val_det", ShardConfig(workers=1), report, False)
    mpii, report = read_mpii(out / "mpii" / "annot" / "train.json", out / "mpii" / "images")
    write_shards(mpii, MPII, out / "shards", "mpii_train", ShardConfig(samples_per_shard=16, workers=1), report, False)
    return out


@pytest.mark.parametrize("split,kset", [("coco_train", COCO), ("mpii_train", MPII)])
def test_both_loaders_read_every_sample_with_correct_geometry(synthetic, split, kset):
    manifest_samples = sum(1 for _ in (synthetic / "shards").glob(f"{split}-*.tar"))
    assert manifest_samples >= 1
    config = LoaderConfig(input_size=(128, 96), batch_size=8, workers=1, seed=3)
    loaders = {
        "dali": DaliLoader(synthetic / "shards", split, config),
        "twin": TwinLoader(synthetic / "shards", split, replace(config, workers=0)),
    }
    counts = {}
    for name, loader in loaders.items():
        seen = []
        for batch in loader:
            seen += [int(i) for i, v in zip(batch["ids"][:, 1], batch["valid"]) if v]
            joints, visible = crop_joints(batch, kset)
            # joints in the crop map back to the stored annotations through the inverse affine
            order = torch.tensor(kset.flip_index())
            flipped = batch["flip"] > 0.5
            stored = torch.where(flipped[:, None, None], batch["kpt"][:, order, :2], batch["kpt"][..., :2]).double()
            linear, shift = batch["matrix"][:, :, :2].double(), batch["matrix"][:, :, 2].double()
            back = torch.linalg.solve(linear, (joints.double() - shift[:, None]).transpose(1, 2)).transpose(1, 2)
            assert torch.allclose(back[visible > 0], stored[visible > 0], atol=1e-2)
            # every target peaks on its joint (heatmap pixels), where the joint is on the map
            targets, weights, joints_hm = make_targets(batch, kset, CODEC)
            peaks = targets.flatten(2).argmax(-1)
            hm_w, hm_h = 24, 32
            inside = (weights > 0) & (joints_hm[..., 0].round() >= 0) & (joints_hm[..., 0].round() < hm_w)
            inside &= (joints_hm[..., 1].round() >= 0) & (joints_hm[..., 1].round() < hm_h)
            assert ((peaks % hm_w - joints_hm[..., 0]).abs()[inside] <= 0.5 + 1e-4).all()
            assert ((peaks // hm_w - joints_hm[..., 1]).abs()[inside] <= 0.5 + 1e-4).all()
        counts[name] = sorted(seen)
    assert counts["dali"] == counts["twin"]
    assert len(counts["dali"]) == len(set(counts["dali"]))  # each sample once per epoch


def test_detections_give_validation_samples_with_scores(synthetic):
    config = LoaderConfig(
        input_size=(128, 96), batch_size=64, workers=1, augment=AugmentConfig(enabled=False), shuffle=False
    )
    batch = next(iter(DaliLoader(synthetic / "shards", "coco_val_det", config)))
    valid = batch["valid"] > 0
    scores = batch["geom"][valid, 6]
    assert (scores > 0).all() and (scores <= 1).all()
    assert (batch["kpt"][valid, :, 2] == 0).all()  # detections carry no joints
    assert np.allclose(batch["center"][valid].numpy(), batch["geom"][valid, 0:2].numpy())
