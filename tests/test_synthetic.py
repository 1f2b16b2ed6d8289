"""The synthetic dataset: determinism, official formats, label rules, fake detections, MPII files, flip cues."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from pycocotools import mask as mask_utils

from dataops.synthetic import SyntheticConfig, contact_sheet, generate, render_sample
from dataops.synthetic.__main__ import main as cli
from dataops.synthetic.contact_sheet import LEFT, RIGHT
from dataops.synthetic.detections import box_iou
from dataops.synthetic.writer import mask_rle
from transpose.evaluation import (
    evaluate_coco,
    evaluate_mpii,
    ground_truth_as_results,
    load_coco_ground_truth,
    load_mpii_ground_truth,
)
from transpose.keypoints import COCO

SMALL = SyntheticConfig(seed=5, coco_train=6, coco_val=30, mpii_train=4, mpii_valid=12)
WIDTH, HEIGHT = SMALL.image_size


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synthetic")
    generate(SMALL, out, workers=1, progress=False)
    return out


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_gives_identical_bytes_for_any_worker_count(tmp_path):
    cfg = SyntheticConfig(seed=3, coco_train=3, coco_val=3, mpii_train=2, mpii_valid=2)
    generate(cfg, tmp_path / "a", workers=1, progress=False)
    generate(cfg, tmp_path / "b", workers=2, progress=False)
    a, b = _files(tmp_path / "a"), _files(tmp_path / "b")
    assert sorted(a) == sorted(b)
    assert sum(name.endswith(".jpg") for name in a) == 10
    assert "mpii/annot/gt_valid.mat" in a and "coco/annotations/person_keypoints_val.json" in a
    assert all(a[name] == b[name] for name in a), [name for name in a if a[name] != b[name]]

    generate(SyntheticConfig(seed=4, coco_train=3, coco_val=3, mpii_train=2, mpii_valid=2), tmp_path / "c", 1, False)
    c = _files(tmp_path / "c")
    jpgs = [name for name in a if name.endswith(".jpg")]
    assert all(a[name] != c[name] for name in jpgs)
    assert a["coco/annotations/person_keypoints_train.json"] != c["coco/annotations/person_keypoints_train.json"]


def test_render_sample_depends_only_on_seed_split_and_index():
    one, two = render_sample(SMALL, "coco_val", 7), render_sample(SMALL, "coco_val", 7)
    assert np.array_equal(one.image, two.image)
    assert [p.keypoints.tolist() for p in one.people] == [p.keypoints.tolist() for p in two.people]
    assert not np.array_equal(one.image, render_sample(SMALL, "coco_train", 7).image)


@pytest.mark.parametrize("split", ["train", "val"])
def test_coco_files_load_and_ground_truth_scores_ap_one(dataset, split):
    path = dataset / "coco" / "annotations" / f"person_keypoints_{split}.json"
    gt = load_coco_ground_truth(path)
    assert gt.notes == []  # area, iscrowd and num_keypoints are all present
    assert gt.keypoint_set.names == COCO.names
    assert gt.keypoint_set.flip_pairs == COCO.flip_pairs
    data = json.loads(path.read_text())
    assert data["categories"][0]["skeleton"] == [[a + 1, b + 1] for a, b in COCO.skeleton]
    for image in data["images"]:
        assert (dataset / "coco" / "images" / split / image["file_name"]).is_file()
        assert (image["width"], image["height"]) == (WIDTH, HEIGHT)
    assert len(data["annotations"]) >= len(data["images"])
    metrics, _ = evaluate_coco(gt, ground_truth_as_results(gt))
    assert metrics["AP"] == pytest.approx(1.0)
    assert metrics["AR"] == pytest.approx(1.0)


def test_coco_labels_follow_the_rules(dataset):
    data = json.loads((dataset / "coco" / "annotations" / "person_keypoints_val.json").read_text())
    counts = np.zeros(3, int)
    for ann in data["annotations"]:
        kpts = np.array(ann["keypoints"], dtype=np.float64).reshape(17, 3)
        v = kpts[:, 2].astype(int)
        counts += np.bincount(v, minlength=3)
        assert set(v.tolist()) <= {0, 1, 2}
        assert ann["num_keypoints"] == int((v > 0).sum())
        assert ann["iscrowd"] == 0 and ann["category_id"] == 1
        assert np.all(kpts[v == 0, :2] == 0)
        labelled = kpts[v > 0]
        assert np.all((labelled[:, 0] >= 0) & (labelled[:, 0] <= WIDTH - 1))
        assert np.all((labelled[:, 1] >= 0) & (labelled[:, 1] <= HEIGHT - 1))
        x, y, w, h = ann["bbox"]
        assert x >= 0 and y >= 0 and w > 0 and h > 0 and x + w <= WIDTH and y + h <= HEIGHT
        visible = kpts[v == 2]  # on a mask pixel: within half a pixel of the mask's box
        assert np.all((visible[:, 0] >= x - 0.5) & (visible[:, 0] <= x + w - 0.5))
        assert np.all((visible[:, 1] >= y - 0.5) & (visible[:, 1] <= y + h - 0.5))
        assert int(mask_utils.area(ann["segmentation"])) == ann["area"] <= w * h  # segment area, not box area
        assert mask_utils.toBbox(ann["segmentation"]).tolist() == [x, y, w, h]
    assert counts[2] > counts[1] > counts[0] > 0


def test_v0_exactly_outside_the_image_or_unlabelled_face():
    seen_outside = seen_away = 0
    for index in range(40):
        for person in render_sample(SMALL, "coco_train", index).people:
            xy, v = person.projected, person.keypoints[:, 2]
            inside = (xy[:, 0] >= 0) & (xy[:, 0] <= WIDTH - 1) & (xy[:, 1] >= 0) & (xy[:, 1] <= HEIGHT - 1)
            assert np.all(v[~inside] == 0)
            face = np.zeros(17, bool)
            face[:3] = person.looks_away  # nose and eyes of a head turned away
            assert np.all(v[inside & ~face] > 0)
            assert np.all(v[face] == 0)
            seen_outside += int((~inside).sum())
            seen_away += int(person.looks_away)
    assert seen_outside > 0 and seen_away > 0


def test_side_and_back_views_self_occlude_far_joints():
    occluded = {"front": [], "side": [], "back": []}
    for index in range(60):
        for person in render_sample(SMALL, "coco_train", index).people:
            v = person.keypoints[5:, 2]  # body joints
            if (v > 0).sum() >= 10:
                occluded[person.facing].append(float((v == 1).sum()) / float((v > 0).sum()))
    assert np.mean(occluded["side"]) > np.mean(occluded["front"]) + 0.1
    assert np.mean(occluded["back"]) > np.mean(occluded["front"])


def test_detections_have_false_positives_and_misses(dataset):
    gt = json.loads((dataset / "coco" / "annotations" / "person_keypoints_val.json").read_text())
    dets = json.loads((dataset / "coco" / "person_detection_results" / "synthetic_val_detections.json").read_text())
    image_ids = {image["id"] for image in gt["images"]}
    boxes: dict[int, list] = {}
    for ann in gt["annotations"]:
        boxes.setdefault(ann["image_id"], []).append(ann)
    for det in dets:
        assert set(det) == {"image_id", "category_id", "bbox", "score"}
        assert det["image_id"] in image_ids and det["category_id"] == 1
        x, y, w, h = det["bbox"]
        assert w > 0 and h > 0 and x >= 0 and y >= 0 and x + w <= WIDTH and y + h <= HEIGHT
        assert 0 < det["score"] <= 1
    best = [max((box_iou(d["bbox"], a["bbox"]) for a in boxes.get(d["image_id"], [])), default=0.0) for d in dets]
    false_pos = [d for d, iou in zip(dets, best) if iou < 0.5]
    hits = [d for d, iou in zip(dets, best) if iou >= 0.7]
    missed = [
        a
        for a in gt["annotations"]
        if a["num_keypoints"] > 0
        and max((box_iou(d["bbox"], a["bbox"]) for d in dets if d["image_id"] == a["image_id"]), default=0) < 0.5
    ]
    people = sum(1 for a in gt["annotations"] if a["num_keypoints"] > 0)
    assert false_pos and missed
    assert len(missed) < 0.3 * people  # a usable detector: most people found
    assert np.mean([d["score"] for d in hits]) > np.mean([d["score"] for d in false_pos]) + 0.2
    gt_index = load_coco_ground_truth(gt).coco
    gt_index.loadRes(dets)  # pycocotools accepts it as detection results


def test_mpii_json_and_mat_agree_and_score_pckh_100(dataset):
    entries = json.loads((dataset / "mpii" / "annot" / "valid.json").read_text())
    train = json.loads((dataset / "mpii" / "annot" / "train.json").read_text())
    assert entries and train
    gt = load_mpii_ground_truth(dataset / "mpii" / "annot" / "gt_valid.mat")
    assert gt.num_people == len(entries)
    joints = np.array([e["joints"] for e in entries], dtype=np.float64)  # [N, 16, 2], 1-based
    vis = np.array([e["joints_vis"] for e in entries])
    assert np.array_equal(gt.jnt_missing, 1 - vis.T)
    assert np.allclose(np.transpose(gt.pos_gt_src, (2, 0, 1)), joints)
    assert np.all(joints[vis == 0] == -1)
    labelled = joints[vis == 1]
    assert np.all((labelled >= 1) & (labelled <= [WIDTH, HEIGHT]))
    heads = gt.headboxes_src
    assert np.all(heads[1] > heads[0])
    for e in entries + train:
        assert set(e) == {"image", "center", "scale", "joints", "joints_vis"}
        assert (dataset / "mpii" / "images" / e["image"]).is_file()
        assert len(e["joints"]) == 16 and len(e["joints_vis"]) == 16 and e["scale"] > 0
    metrics = evaluate_mpii(joints - 1.0, gt)  # the loader's 1-based -> 0-based
    assert metrics["PCKh"] == pytest.approx(100.0)
    assert metrics["PCKh_0.1"] == pytest.approx(100.0)


def test_mpii_is_one_based_pixel_coordinates(dataset):
    entries = json.loads((dataset / "mpii" / "annot" / "valid.json").read_text())
    sample = render_sample(SMALL, "mpii_valid", 0)
    first = [e for e in entries if e["image"] == entries[0]["image"]]
    annotated = [p for p in sample.people if p.mpii_ok]
    assert len(first) == len(annotated)
    for entry, person in zip(first, annotated):
        ok = person.mpii_labelled
        assert np.allclose(np.array(entry["joints"])[ok], person.mpii_joints[ok] + 1.0)
        # pelvis and thorax are the hip and shoulder midpoints (MPII order: 2 r_hip, 3 l_hip, 12 r_sho, 13 l_sho)
        j = person.mpii_joints
        assert np.allclose(j[6], (j[2] + j[3]) / 2, atol=0.011) and np.allclose(j[7], (j[12] + j[13]) / 2, atol=0.011)
        assert entry["scale"] == pytest.approx(person.height / 200.0, abs=1e-4)


def test_left_and_right_limbs_look_different():
    """A flipped person is not the same picture: left limbs are painted darker than the right ones."""
    cfg = SyntheticConfig(seed=11)
    pairs = [(7, 8), (9, 10), (13, 14), (15, 16)]  # elbows, wrists, knees, ankles
    diffs = []
    for index in range(40):
        sample = render_sample(cfg, "coco_train", index)
        grey = cv2.cvtColor(sample.image, cv2.COLOR_BGR2GRAY).astype(np.float64)
        for person in sample.people:
            k = person.keypoints
            for left, right in pairs:
                if k[left, 2] == 2 and k[right, 2] == 2:
                    lx, ly = np.round(k[left, :2]).astype(int)
                    rx, ry = np.round(k[right, :2]).astype(int)
                    lv = grey[max(0, ly - 1) : ly + 2, max(0, lx - 1) : lx + 2].mean()
                    rv = grey[max(0, ry - 1) : ry + 2, max(0, rx - 1) : rx + 2].mean()
                    diffs.append((rv - lv) / (rv + lv + 1e-6))
    diffs = np.array(diffs)
    assert len(diffs) > 100
    assert np.mean(diffs) > 0.04  # right brighter on average: mirror images differ
    assert np.mean(diffs > 0) > 0.6


def test_contact_sheet_draws_left_and_right_skeletons(tmp_path):
    path = tmp_path / "sheet.png"
    sheet = contact_sheet(SMALL, path, num_images=4, columns=2, tile_width=200)
    assert path.is_file()
    assert np.array_equal(cv2.imread(str(path)), sheet)
    assert sheet.shape[1] == 2 * 204
    for colour in (LEFT, RIGHT):
        assert np.any(np.all(sheet == np.array(colour, np.uint8), axis=2))


def test_cli_writes_the_layout_and_reports(tmp_path, capsys):
    args = ["--out", str(tmp_path), "--seed", "22", "--coco-train", "2", "--coco-val", "2"]
    assert cli([*args, "--mpii-train", "1", "--mpii-valid", "1", "--workers", "1", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "coco_val: 2 images" in out and "detections:" in out and "v=2" in out
    for rel in (
        "coco/annotations/person_keypoints_train.json",
        "coco/annotations/person_keypoints_val.json",
        "coco/person_detection_results/synthetic_val_detections.json",
        "mpii/annot/train.json",
        "mpii/annot/valid.json",
        "mpii/annot/gt_valid.mat",
        "synthetic_summary.json",
    ):
        assert (tmp_path / rel).is_file(), rel
    assert len(list((tmp_path / "coco" / "images" / "train").glob("*.jpg"))) == 2
    summary = json.loads((tmp_path / "synthetic_summary.json").read_text())
    assert summary["config"]["seed"] == 22 and summary["splits"]["coco_train"]["images"] == 2
    # a smaller rerun into the same folder leaves no stale images behind
    assert cli(["--out", str(tmp_path), "--coco-train", "1", "--coco-val", "1", "--mpii-train", "0", "--mpii-valid",
                "0", "--workers", "1", "--no-progress"]) == 0  # fmt: skip
    assert len(list((tmp_path / "coco" / "images" / "train").glob("*.jpg"))) == 1
    with pytest.raises(SystemExit) as err:
        cli(["--help"])
    assert err.value.code == 0
    assert "person_keypoints" in capsys.readouterr().out


@pytest.mark.parametrize(
    "bad",
    [
        {"coco_train": -1},
        {"coco_val": 1_000_000},
        {"people_per_image": (0, 2)},
        {"person_height": (50, 20)},
        {"left_shade": 0.0},
        {"pose_weights": (("dance", 1.0),)},
    ],
)
def test_config_rejects_bad_values(bad):
    with pytest.raises(ValueError):
        SyntheticConfig(**bad)


def test_mask_rle_matches_pycocotools_on_the_full_mask():
    rng = np.random.default_rng(0)
    for _ in range(200):
        height, width = (int(v) for v in rng.integers(1, 30, 2))
        h, w = int(rng.integers(1, height + 1)), int(rng.integers(1, width + 1))
        x0, y0 = int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1))
        mask = rng.random((h, w)) < rng.random()
        full = np.zeros((height, width), np.uint8)
        full[y0 : y0 + h, x0 : x0 + w] = mask
        expected = mask_utils.encode(np.asfortranarray(full))["counts"].decode("ascii")
        assert mask_rle(mask, x0, y0, height, width) == {"size": [height, width], "counts": expected}
