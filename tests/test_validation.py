"""Validation as the trainer runs it: predictions from the DALI validation shards, back in image coordinates,
scored with the reference's COCO post-processing."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dataops.augment import AugmentConfig
from dataops.datasets import read_coco_keypoints
from dataops.loaders import LoaderConfig
from dataops.loaders.dali_loader import DaliLoader
from dataops.shards import ShardConfig, write_shards
from transpose.engine.validation import gather_predictions, predict
from transpose.evaluation.protocols import dataset_kind
from transpose.keypoints import COCO
from transpose.models import create_model


@pytest.fixture(scope="module")
def val_shards(realdata, tmp_path_factory):
    out = tmp_path_factory.mktemp("val_shards")
    records, report, kset = read_coco_keypoints(realdata / "coco" / "test_coco.json", realdata / "coco")
    config = ShardConfig(augment=AugmentConfig(enabled=False), workers=1)
    write_shards(records, kset, out, "val", config, report, progress=False)
    return out


def test_predictions_are_in_image_coordinates_and_scored(val_shards, realdata):
    model = create_model("transpose_r_tiny", image_size=(128, 96)).eval()
    config = LoaderConfig(
        input_size=(128, 96), batch_size=5, augment=AugmentConfig(enabled=False), shuffle=False, workers=1
    )
    preds = gather_predictions(predict(model, DaliLoader(val_shards, "val", config), COCO, model.data_config.codec()))
    assert preds["keypoints"].shape == (12, 17, 2) and len(set(preds["ann_ids"].tolist())) == 12  # padding dropped
    # predicted joints lie in their person's crop window, in image pixels (random weights give flat heatmaps,
    # on which DARK's Newton step, as in the reference, can shoot off: only the argmax-like majority is checked)
    records, _, _ = read_coco_keypoints(realdata / "coco" / "test_coco.json", realdata / "coco")
    by_id = {r.annotation_id: r for r in records}
    ratios = np.stack(
        [
            np.abs(k - by_id[int(a)].center) / (by_id[int(a)].scale * 100)
            for k, a in zip(preds["keypoints"], preds["ann_ids"])
        ]
    )
    assert np.isfinite(ratios).all() and np.mean(ratios <= 1.01) > 0.9
    metrics, results = dataset_kind("coco").scorer(realdata / "coco" / "test_coco.json", COCO)(preds)
    assert set(metrics) >= {"AP", "AR"} and 0.0 <= metrics["AP"] <= 1.0
    assert results and all(len(r["keypoints"]) == 51 for r in results)
    assert np.allclose(sorted(preds["box_scores"]), 1.0)  # GT boxes score 1
    assert torch.is_tensor(next(model.parameters()))
