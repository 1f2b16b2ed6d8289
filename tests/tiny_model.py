"""A tiny TransPose fitted for a few steps to the people of the real fixture photos: small and quick, but with
heatmaps that peak where people's joints are, so scores, rescoring and NMS behave as with a trained model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from transpose.codec import HeatmapCodec
from transpose.crops import person_crops, read_image_rgb
from transpose.inference import normalize
from transpose.keypoints import COCO
from transpose.losses import weighted_mse_loss
from transpose.models import ModelCard, create_model

CARD = ModelCard("transpose_r_tiny", (128, 96), COCO, "coco")


def train_tiny(coco_dir: Path, out: Path, steps: int = 40) -> Path:
    """transpose_r_tiny fitted for a few steps to the annotated people of the fixture photos."""
    codec = HeatmapCodec.from_data_config(create_model(CARD.model, num_keypoints=17).data_config)
    data = json.loads((coco_dir / "test_coco.json").read_text())
    files = {i["id"]: coco_dir / i["file_name"] for i in data["images"]}
    crops, targets, weights = [], [], []
    for ann in data["annotations"]:
        if ann.get("num_keypoints", 0) < 5:
            continue
        image = read_image_rgb(files[ann["image_id"]])
        (center,), (scale,), crop = person_crops(image, [ann["bbox"]], CARD.image_size)
        kpts = np.asarray(ann["keypoints"], np.float32).reshape(-1, 3)
        encoded = codec.encode(kpts[:, :2], kpts[:, 2] > 0, center, scale)
        crops.append(crop[0])
        targets.append(encoded["heatmaps"])
        weights.append(encoded["keypoint_weights"])
    x = normalize(np.stack(crops), (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    target, weight = torch.from_numpy(np.stack(targets)), torch.from_numpy(np.stack(weights))
    torch.manual_seed(0)
    model = create_model(CARD.model, num_keypoints=17, image_size=CARD.image_size)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(steps):
        optimizer.zero_grad()
        weighted_mse_loss(model(x), target, weight).backward()
        optimizer.step()
    out.mkdir(parents=True)
    torch.save(model.state_dict(), out / "best.pth")
    CARD.write(out / "model.json")
    return out
