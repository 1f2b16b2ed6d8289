"""COCO OKS AP and MPII PCKh on the real fixtures, against figures computed independently here."""

from __future__ import annotations

import copy
import json
import math

import numpy as np
import pytest

from cli.main import main as cli
from transpose.evaluation import (
    CocoFormatError,
    MpiiGroundTruth,
    evaluate_coco,
    evaluate_mpii,
    ground_truth_as_results,
    load_coco_ground_truth,
    load_coco_results,
    load_mpii_ground_truth,
    oks_nms,
    oks_one_to_many,
    rescore_and_nms,
)
from transpose.evaluation.breakdown import format_breakdown, keypoint_breakdown, plot_breakdown
from transpose.keypoints import COCO_SIGMAS

THRESHOLDS = np.linspace(0.5, 0.95, 10)
RECALLS = np.linspace(0, 1, 101)


@pytest.fixture
def coco_gt(realdata):
    return json.loads((realdata / "coco" / "test_coco.json").read_text())


def shifted_results(gt_json, oks: float, keep=None) -> list[dict]:
    """Predictions whose every labelled keypoint is moved so that each OKS term, hence the OKS, equals `oks`."""
    results = []
    for ann in gt_json["annotations"]:
        if ann["num_keypoints"] == 0 or (keep is not None and ann["id"] not in keep):
            continue
        kpts = np.array(ann["keypoints"], dtype=np.float64).reshape(-1, 3)
        variances = (2 * np.array(COCO_SIGMAS)) ** 2
        # term = exp(-d^2 / variance / area / 2)  =>  d = sqrt(-2 ln(oks) * variance * area)
        shift = np.sqrt(-2 * math.log(oks) * variances * (ann["area"] + np.spacing(1)))
        kpts[:, 0] += shift
        kpts[:, 2] = 1.0
        results.append(
            {"image_id": ann["image_id"], "category_id": 1, "keypoints": kpts.ravel().tolist(), "score": 1.0}
        )
    return results


def test_ground_truth_as_predictions_scores_one(coco_gt):
    gt = load_coco_ground_truth(coco_gt)
    metrics, summary = evaluate_coco(gt, ground_truth_as_results(gt))
    assert all(metrics[k] == pytest.approx(1.0) for k in ("AP", "AP50", "AP75", "AR"))
    assert "Average Precision" in summary


@pytest.mark.parametrize("oks", [0.72, 0.86, 0.97])
def test_uniformly_perturbed_predictions(coco_gt, oks):
    gt = load_coco_ground_truth(coco_gt)
    metrics, _ = evaluate_coco(gt, shifted_results(coco_gt, oks))
    # every prediction is a true positive at thresholds <= oks and a false one above: AP = fraction passed
    expected = float(np.mean(oks + 1e-12 >= THRESHOLDS))
    assert metrics["AP"] == pytest.approx(expected, abs=1e-6)
    assert metrics["AP50"] == 1.0 and metrics["AP75"] == (1.0 if oks >= 0.75 else 0.0)
    assert metrics["AR"] == pytest.approx(expected, abs=1e-6)


def test_missing_predictions_lower_recall(coco_gt):
    gt = load_coco_ground_truth(coco_gt)
    labelled = [a["id"] for a in coco_gt["annotations"] if a["num_keypoints"] > 0]
    keep = set(labelled[: len(labelled) - 3])
    metrics, _ = evaluate_coco(gt, shifted_results(coco_gt, 0.999, keep=keep))
    recall = len(keep) / len(labelled)
    # precision 1 up to `recall`, 0 after: the 101-point AP counts the recall points <= recall
    assert metrics["AP"] == pytest.approx(float(np.mean(recall + 1e-12 >= RECALLS)), abs=1e-6)
    assert metrics["AR"] == pytest.approx(recall, abs=1e-6)


def test_any_coco_format_file(coco_gt, tmp_path):
    """OCHuman/PoseTrack style: RLE segmentation, no area, boolean iscrowd, folders in file names, 14 keypoints."""
    data = copy.deepcopy(coco_gt)
    for img in data["images"]:
        img["file_name"] = f"images/val/{img['file_name']}"
    for ann in data["annotations"]:
        ann.pop("area")
        ann["iscrowd"] = False
        ann["segmentation"] = {"size": [480, 640], "counts": "PPYo0"}
        ann["keypoints"] = ann["keypoints"][: 14 * 3]
        ann.pop("num_keypoints")
    data["categories"][0]["keypoints"] = data["categories"][0]["keypoints"][:14]
    data["categories"][0]["skeleton"] = [s for s in data["categories"][0]["skeleton"] if max(s) <= 14]
    path = tmp_path / "custom.json"
    path.write_text(json.dumps(data))
    with pytest.raises(CocoFormatError, match="sigmas"):
        evaluate_coco(load_coco_ground_truth(path), [])
    gt = load_coco_ground_truth(path, sigmas=COCO_SIGMAS[:14])
    assert any("derived it from the box" in note for note in gt.notes)
    assert any("boolean 'iscrowd'" in note for note in gt.notes)
    assert gt.keypoint_set.flip_pairs[:2] == ((1, 2), (3, 4))
    metrics, _ = evaluate_coco(gt, ground_truth_as_results(gt))
    assert metrics["AP"] == pytest.approx(1.0)


def test_results_files_that_are_not_coco_format(tmp_path):
    (tmp_path / "r.json").write_text('{"annotations": []}')
    with pytest.raises(CocoFormatError, match="r.json: top level is dict"):
        load_coco_results(tmp_path / "r.json", 17)
    good = {"image_id": 1, "category_id": 1, "keypoints": [0.0] * 51, "score": 0.9}
    with pytest.raises(CocoFormatError, match="entry #1 has keypoints of length 34, expected 51"):
        load_coco_results([good, {**good, "keypoints": [0.0] * 34}], 17)
    with pytest.raises(CocoFormatError, match=r"entry #0 lacks \['score'\]"):
        load_coco_results([{k: v for k, v in good.items() if k != "score"}], 17)
    (tmp_path / "bad.json").write_text("[{")
    with pytest.raises(CocoFormatError, match="not valid JSON"):
        load_coco_results(tmp_path / "bad.json", 17)


def test_rescoring_and_oks_nms():
    base = np.stack([np.linspace(100, 200, 17), np.linspace(50, 300, 17)], axis=1)
    keypoints = np.stack([base, base + 0.5, base + 80.0])
    maxvals = np.full((3, 17), 0.1)
    maxvals[0, :4] = [0.5, 0.9, 0.3, 0.2]  # 0.2 is not above the threshold
    maxvals[1, :] = 0.8
    maxvals[2, :] = 0.6
    results = rescore_and_nms(keypoints, maxvals, [0.8, 0.5, 1.0], [20000.0] * 3, [7, 7, 7], COCO_SIGMAS)
    scores = {round(r["score"], 6) for r in results}
    # pose 0: mean(0.5, 0.9, 0.3) * 0.8; pose 1: 0.8 * 0.5 is a near duplicate of pose 0 and has a lower score
    assert scores == {round(np.mean([0.5, 0.9, 0.3]) * 0.8, 6), 0.6}
    assert all(len(r["keypoints"]) == 51 and r["image_id"] == 7 for r in results)


def test_oks_matches_its_definition():
    g = np.array([[10.0, 10.0, 1.0], [20.0, 20.0, 1.0]])
    d = np.array([[[13.0, 14.0, 1.0], [20.0, 20.0, 1.0]]])
    sig = [0.05, 0.1]
    got = oks_one_to_many(g, d, 400.0, np.array([600.0]), sig)
    e0 = 25 / (2 * 0.05) ** 2 / 500.0 / 2
    assert got[0] == pytest.approx((math.exp(-e0) + 1.0) / 2)
    poses = np.stack([g, g + [0.1, 0.1, 0], g + [50, 50, 0]])
    assert oks_nms(poses, np.array([0.5, 0.9, 0.1]), np.array([400.0] * 3), 0.9, sig) == [1, 2]


def mpii_ground_truth(realdata) -> tuple[MpiiGroundTruth, np.ndarray]:
    """gt_valid.mat-style arrays from the real MPII fixture. The json has no head boxes, so each head box is
    made here as the square whose diagonal is twice the upper-neck -> head-top segment."""
    people = json.loads((realdata / "mpii" / "test_mpii.json").read_text())
    joints = np.array([p["joints"] for p in people], dtype=np.float64)  # 1-based pixels
    vis = np.array([p["joints_vis"] for p in people])
    seg = np.linalg.norm(joints[:, 9] - joints[:, 8], axis=1)
    centre = (joints[:, 9] + joints[:, 8]) / 2
    half = seg / math.sqrt(2)
    boxes = np.stack([centre - half[:, None], centre + half[:, None]])  # [2, N, 2]
    gt = MpiiGroundTruth(
        pos_gt_src=joints.transpose(1, 2, 0), jnt_missing=(1 - vis).T, headboxes_src=boxes.transpose(0, 2, 1)
    )
    return gt, joints - 1.0  # predictions are 0-based


def test_mpii_ground_truth_scores_100(realdata, tmp_path):
    gt, preds = mpii_ground_truth(realdata)
    gt.save_mat(tmp_path / "gt_valid.mat")
    loaded = load_mpii_ground_truth(tmp_path / "gt_valid.mat")
    metrics = evaluate_mpii(preds, loaded)
    assert all(v == pytest.approx(100.0) for v in metrics.values())


def test_mpii_perturbed_predictions(realdata):
    gt, preds = mpii_ground_truth(realdata)
    head = np.linalg.norm(gt.headboxes_src[1] - gt.headboxes_src[0], axis=0) * 0.6
    preds = preds.copy()
    preds[0, 10, 0] += 0.6 * head[0]  # person 0's right wrist misses at 0.5
    preds[:, 4, 1] += 0.105 * head  # every left knee: inside 0.11 but outside 0.1
    metrics = evaluate_mpii(preds, gt)
    vis = 1 - gt.jnt_missing  # [16, N]
    counts = vis.sum(axis=1)
    # independent computation with plain loops
    wrist_r = 100.0 * (vis[10].sum() - vis[10, 0]) / counts[10]
    assert metrics["Wrist"] == pytest.approx((wrist_r + 100.0) / 2)
    assert metrics["Knee"] == pytest.approx(100.0)
    weights = [counts[j] if j not in (6, 7) else 0 for j in range(16)]
    total = sum(weights)
    pck05 = sum(w * (wrist_r if j == 10 else 100.0) for j, w in enumerate(weights)) / total
    pck01 = sum(w * (0.0 if j == 4 else wrist_r if j == 10 else 100.0) for j, w in enumerate(weights)) / total
    assert metrics["PCKh"] == pytest.approx(pck05)
    assert metrics["PCKh_0.1"] == pytest.approx(pck01)
    assert metrics["PCKh_0.11"] == pytest.approx(pck05)  # the reference's "Mean@0.1" is taken at 0.11


def test_cli_evaluate_coco_and_mpii(realdata, tmp_path, capsys, coco_gt):
    results = tmp_path / "results.json"
    results.write_text(json.dumps(shifted_results(coco_gt, 0.86)))
    out = tmp_path / "m.json"
    assert (
        cli(
            [
                "evaluate",
                "coco",
                "--ann",
                str(realdata / "coco" / "test_coco.json"),
                "--results",
                str(results),
                "--out",
                str(out),
                "--breakdown",
                str(tmp_path / "where.png"),
            ]
        )
        == 0
    )
    metrics = json.loads(out.read_text())
    assert set(metrics) >= {"AP", "AP50", "AP75", "APm", "APl", "AR"} and metrics["AP"] == pytest.approx(0.8)
    printed = capsys.readouterr().out
    assert "| AP | AP50 |" in printed and "weakest first" in printed
    assert json.loads((tmp_path / "where.json").read_text())["mean_oks"] == pytest.approx(0.86)
    assert (tmp_path / "where.png").is_file()
    results.write_text(json.dumps({"not": "a list"}))
    assert cli(["evaluate", "coco", "--ann", str(realdata / "coco" / "test_coco.json"), "--results", str(results)]) == 2
    assert "COCO results" not in capsys.readouterr().out
    gt, preds = mpii_ground_truth(realdata)
    gt.save_mat(tmp_path / "gt_valid.mat")
    np.save(tmp_path / "preds.npy", preds)
    assert (
        cli(
            [
                "evaluate",
                "mpii",
                "--gt",
                str(tmp_path / "gt_valid.mat"),
                "--preds",
                str(tmp_path / "preds.npy"),
                "--out",
                str(out),
            ]
        )
        == 0
    )
    assert json.loads(out.read_text())["PCKh"] == pytest.approx(100.0)
    assert "Mean@0.1 (ref: 0.11)" in capsys.readouterr().out


def test_keypoint_breakdown_finds_joints_swaps_and_misses(coco_gt, tmp_path):
    gt = load_coco_ground_truth(coco_gt)
    people = [a for a in coco_gt["annotations"] if a["num_keypoints"] > 0 and not a.get("iscrowd")]
    perfect = keypoint_breakdown(gt, ground_truth_as_results(gt))
    assert perfect["people"] == len(people) and perfect["unmatched"] == 0
    assert perfect["mean_oks"] == pytest.approx(1.0) and perfect["mirrored"] == 0.0
    assert all(r == pytest.approx(1.0) for r in perfect["joints"].values() if r is not None)
    assert sum(b["people"] for b in perfect["by_size"]) == len(people)
    # every joint term at 0.6 passes the 0.5 threshold, at 0.4 none does
    assert all(r == 1.0 for r in keypoint_breakdown(gt, shifted_results(coco_gt, 0.6))["joints"].values() if r)
    low = keypoint_breakdown(gt, shifted_results(coco_gt, 0.4))
    assert low["mean_oks"] == pytest.approx(0.4) and not any(low["joints"].values())
    # left and right swapped: found mirrored
    flip = gt.keypoint_set.flip_index()
    mirrored = [
        {**r, "keypoints": np.asarray(r["keypoints"]).reshape(-1, 3)[flip].ravel().tolist()}
        for r in ground_truth_as_results(gt)
    ]
    assert keypoint_breakdown(gt, mirrored)["mirrored"] > 0.8
    # an image without results: its people are unmatched and score 0
    dropped = people[0]["image_id"]
    partial = [r for r in ground_truth_as_results(gt) if r["image_id"] != dropped]
    missing = sum(1 for a in people if a["image_id"] == dropped)
    assert keypoint_breakdown(gt, partial)["unmatched"] == missing
    assert "weakest first" in format_breakdown(perfect)
    assert plot_breakdown(low, tmp_path / "breakdown.png").stat().st_size > 10_000
