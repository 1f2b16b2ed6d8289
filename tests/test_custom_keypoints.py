"""A COCO-format dataset with a keypoint set of its own (5 named keypoints, its own OKS sigmas, flip pairs from
its names) through the stage code: shard -> pretrain -> evaluate -> predict, and COCO -> that set transfer.
The dataset's file is the only place its keypoints are stated; every later stage reads them from the data or
the model card."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from cli.main import main as cli
from dataops.shards import read_manifest
from dataops.synthetic import SyntheticConfig, generate
from transpose.crops import read_image_rgb
from transpose.evaluation import evaluate_coco, load_coco_ground_truth
from transpose.inference import predict_boxes
from transpose.keypoints import COCO, KeypointSet
from transpose.models import load_trained

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]
NAMES = ("head", "left_hand", "right_hand", "left_foot", "right_foot")
FROM_COCO = [COCO.names.index(n) for n in ("nose", "left_wrist", "right_wrist", "left_ankle", "right_ankle")]
SIGMAS = [0.6, 0.8, 0.8, 0.9, 0.9]  # loose on purpose: an untrained model scores AP > 0 with these, ~0 with COCO's
SKELETON = [[1, 2], [1, 3], [1, 4], [1, 5]]  # 1-based, as COCO's


def hands_file(coco_file: Path, out: Path) -> Path:
    """The synthetic COCO file with each person's 5 keypoints of this set, and the set in its category."""
    data = json.loads(coco_file.read_text())
    category = {"id": 1, "name": "hands_and_feet", "keypoints": list(NAMES), "skeleton": SKELETON, "sigmas": SIGMAS}
    for ann in data["annotations"]:
        kpts = np.asarray(ann["keypoints"], dtype=float).reshape(17, 3)[FROM_COCO]
        ann["keypoints"] = kpts.reshape(-1).tolist()
        ann["num_keypoints"] = int((kpts[:, 2] > 0).sum())
    data["categories"] = [category]
    out.write_text(json.dumps(data))
    return out


def training_section(shards: str, out_dir: str, **extra) -> dict:
    return {
        "shards": shards,
        "out_dir": out_dir,
        "metrics": f"metrics/{Path(out_dir).name}.json",
        "plots": f"plots/{Path(out_dir).name}.png",
        "loader": "dali",
        "batch_size": 8,
        "workers": 1,
        "deepspeed_config": str(REPO / "infra" / "deepspeed" / "zero0_fp32.json"),
        "augment": {"scale_factor": 0.25, "rotation_factor": 30, "half_body_prob": 0.0},
        "train": {"epochs": 2, "lr": 0.002, "warmup_steps": 5, "val_every_epochs": 1},
        **extra,
    }


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """A working folder with the datasets and a params.yaml naming them; the stages run in it."""
    work = tmp_path_factory.mktemp("custom")
    synthetic = work / "synthetic"
    generate(SyntheticConfig(seed=9, coco_train=40, coco_val=10, mpii_train=0, mpii_valid=0), synthetic, workers=2,
             progress=False)  # fmt: skip
    coco = synthetic / "coco"
    for split in ("train", "val"):
        hands_file(
            coco / "annotations" / f"person_keypoints_{split}.json", coco / "annotations" / f"hands_{split}.json"
        )
    detections = "person_detection_results/synthetic_val_detections.json"
    params = {
        "data": {
            "source": "real",
            "datasets": {
                "hands": {
                    "kind": "coco",
                    "root": str(coco),
                    "train": {"annotations": "annotations/hands_train.json", "images": "images/train"},
                    "val": {
                        "annotations": "annotations/hands_val.json",
                        "images": "images/val",
                        "detections": detections,
                    },
                },
                "coco": {
                    "kind": "coco",
                    "root": str(coco),
                    "train": {"annotations": "annotations/person_keypoints_train.json", "images": "images/train"},
                    "val": {"annotations": "annotations/person_keypoints_val.json", "images": "images/val"},
                },
            },
        },
        "shard": {"aspect_ratio": 0.75, "samples_per_shard": 64, "workers": 1},
        "pretrain_hands": training_section(
            "data/shards/hands", "outputs/hands", model="transpose_r_tiny", image_size=[64, 48]
        ),
        "pretrain_coco": training_section(
            "data/shards/coco", "outputs/coco", model="transpose_r_tiny", image_size=[64, 48]
        ),
        "transfer_hands": training_section(
            "data/shards/hands",
            "outputs/transfer",
            init_from="outputs/coco",
            train={"epochs": 1, "lr": 0.0005, "head_lr": 0.002},
        ),
        "evaluate_hands": {
            "runs": {"hands": "outputs/hands", "transfer": "outputs/transfer"},
            "shards": "data/shards/hands",
            "split": "val_det",
            "out_dir": "outputs/evaluate_hands",
            "metrics": "metrics/evaluate_hands.json",
            "figures": "plots/evaluate_hands",
            "explain_samples": 1,
            "batch_size": 16,
            "workers": 1,
        },
    }
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for module, stage in (
        ("pipelines.shard_data", None),
        ("pipelines.train", "pretrain_hands"),
        ("pipelines.train", "pretrain_coco"),
        ("pipelines.train", "transfer_hands"),
        ("pipelines.evaluate", "evaluate_hands"),
    ):
        argv = [sys.executable, "-m", module, "--no-mlflow", *(["--stage", stage] if stage else [])]
        done = subprocess.run(argv, cwd=work, env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, f"{module} {stage}:\n{done.stdout[-3000:]}\n{done.stderr[-5000:]}"
    return work


def test_the_shards_carry_the_datasets_own_keypoint_set(project):
    for split in ("train", "val", "val_det"):
        manifest = read_manifest(project / "data" / "shards" / "hands", split)
        assert manifest.dataset_kind == "coco" and manifest.keypoints.names == NAMES
        assert list(manifest.keypoints.sigmas) == SIGMAS
        assert manifest.keypoints.flip_pairs == ((1, 2), (3, 4))  # found from the left/right names
        assert manifest.keypoints.skeleton == ((0, 1), (0, 2), (0, 3), (0, 4))
    assert read_manifest(project / "data" / "shards" / "hands", "val_det").ground_truth.is_file()
    assert read_manifest(project / "data" / "shards" / "coco", "train").keypoints.names == COCO.names


def test_training_gives_one_heatmap_per_keypoint_and_a_card_that_says_so(project):
    model, card = load_trained(project / "outputs" / "hands")
    assert card.keypoints.names == NAMES and list(card.keypoints.sigmas) == SIGMAS and card.dataset_kind == "coco"
    assert model.num_keypoints == 5 and model(torch.zeros(1, 3, 64, 48)).shape == (1, 5, 16, 12)
    history = json.loads((project / "outputs" / "hands" / "history.json").read_text())
    assert len(history) == 2 and all("val/AP" in r for r in history)
    phases = ("loader", "targets", "forward", "backward", "allreduce", "optimizer", "logging")
    for record in history:  # where each step's time went, and how long validation took
        assert all(record[f"profile/{p}_ms"] >= 0 for p in phases) and record["profile/forward_ms"] > 0
        assert record["time/validation_s"] > 0
    metrics = json.loads((project / "metrics" / "hands.json").read_text())
    assert set(metrics) == {"best_epoch", "AP", "AP50", "AP75", "APm", "APl", "AR"}  # what people compare
    assert (project / "plots" / "hands.png").stat().st_size > 10_000


def test_transfer_from_coco_to_the_set_gets_a_new_head(project):
    coco, coco_card = load_trained(project / "outputs" / "coco")
    moved, card = load_trained(project / "outputs" / "transfer")
    assert coco.num_keypoints == 17 and moved.num_keypoints == 5
    assert card.keypoints.names == NAMES and card.training["init_from"] == "outputs/coco"
    assert (card.model, card.image_size) == (coco_card.model, coco_card.image_size)  # from the COCO run's card
    history = json.loads((project / "outputs" / "transfer" / "history.json").read_text())
    assert len(history) == 1 and "val/AP" in history[0]


def test_evaluation_scores_with_the_sets_own_sigmas(project):
    metrics = json.loads((project / "metrics" / "evaluate_hands.json").read_text())
    assert set(metrics) == {"hands", "transfer"}
    record = json.loads((project / "outputs" / "evaluate_hands" / "hands_evaluation.json").read_text())
    assert record["gate_metric"] == "AP" and record["data"]["split"] == "val_det"
    results = json.loads((project / "outputs" / "evaluate_hands" / "hands_predictions.json").read_text())
    assert results and all(len(r["keypoints"]) == 15 for r in results)
    truth = project / "synthetic" / "coco" / "annotations" / "hands_val.json"
    ours, _ = evaluate_coco(load_coco_ground_truth(truth), results)
    assert ours["AP"] == pytest.approx(metrics["hands"]["AP"]) and ours["AP"] > 0.05
    tight = KeypointSet("tight", NAMES, ((1, 2), (3, 4)), (), (0.025,) * 5)
    with_coco_like_sigmas, _ = evaluate_coco(load_coco_ground_truth(truth, keypoint_set=tight), results)
    assert with_coco_like_sigmas["AP"] < ours["AP"] / 2  # the reported AP used the file's own sigmas
    assert (project / "plots" / "evaluate_hands" / "training_curves.png").is_file()
    assert (project / "plots" / "evaluate_hands" / "hands_keypoint_errors.png").is_file()


def test_predict_uses_the_cards_keypoints_and_flip_pairs(project, tmp_path):
    coco = project / "synthetic" / "coco"
    out = tmp_path / "predicted"
    code = cli([
        "predict", "--model", str(project / "outputs" / "hands"), "--images", str(coco / "images" / "val"),
        "--boxes", str(coco / "person_detection_results" / "synthetic_val_detections.json"),
        "--annotations", str(coco / "annotations" / "hands_val.json"), "--out", str(out), "--min-box-score", "0.5",
    ])  # fmt: skip
    assert code == 0
    results = json.loads((out / "results.json").read_text())
    assert results and all(len(r["keypoints"]) == 15 for r in results)
    # the flip test swapped the set's own left/right pairs: its keypoints are predict_boxes' with the card's set
    model, card = load_trained(project / "outputs" / "hands")
    images = json.loads((out / "images.json").read_text())
    first = next(i for i in images if i["people"])
    detections = json.loads((coco / "person_detection_results" / "synthetic_val_detections.json").read_text())
    boxes = [d["bbox"] for d in detections if d["image_id"] == first["id"] and d["score"] >= 0.5]
    image = read_image_rgb(coco / "images" / "val" / first["file_name"])
    with torch.no_grad():
        paired = predict_boxes(model, image, boxes, card.keypoints)
        unpaired = predict_boxes(model, image, boxes, KeypointSet("no pairs", NAMES, (), (), tuple(SIGMAS)))
    written = [np.asarray(r["keypoints"]).reshape(5, 3)[:, :2] for r in results if r["image_id"] == first["id"]]
    for kpts in written:
        assert np.abs(paired.keypoints - kpts[None]).max(axis=(1, 2)).min() < 1e-3  # one of the boxes, exactly
    assert np.abs(paired.keypoints - unpaired.keypoints).max() > 0.1
