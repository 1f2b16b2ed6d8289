"""COCO scale without COCO: label-only scenes, label files of a real dataset's size, what the rehearsal found in
the reader (each annotation parsed once, JSON parsed with the collector paused) and the shard planner, and the
rehearsal itself (benchmarks/coco_scale.py) end to end at a tiny scale."""

from __future__ import annotations

import gc
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from report_sections import section

from dataops.datasets import coco as coco_reader
from dataops.datasets import read_coco_keypoints
from dataops.shards import ShardConfig, plan_shards, write_shards
from dataops.synthetic import SyntheticConfig, render_sample
from dataops.synthetic import scene as scene_module
from dataops.synthetic.label_files import COCO_TRAIN2017, COCO_VAL2017, LabelSplit, write_label_split
from dataops.synthetic.scene import sample_labels
from transpose.evaluation import load_coco_ground_truth
from transpose.evaluation.json_input import read_json

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "coco_scale.py"
CONFIG = SyntheticConfig(seed=3)
WIDTH, HEIGHT = CONFIG.image_size


def test_label_only_scenes_are_labelled_exactly_as_painted_ones():
    """The same scene draws, painted into an image and the label map or into the label map only, give the same
    people (keypoints, visibility, boxes, areas, masks) and the same objects: pixels change no label."""
    for seed in range(8):
        painted, unpainted = np.random.default_rng(seed), np.random.default_rng(seed)
        layout, same = scene_module._layout(painted, CONFIG), scene_module._layout(unpainted, CONFIG)
        floor = scene_module.floor_row(painted, HEIGHT, layout.horizon)
        assert scene_module.floor_row(unpainted, HEIGHT, same.horizon) == floor
        image = np.full((HEIGHT, WIDTH, 3), 128, np.uint8)
        people_a, things_a = scene_module._populate(CONFIG, painted, image, layout, floor)
        people_b, things_b = scene_module._populate(CONFIG, unpainted, None, same, floor)
        assert image.std() > 0  # people were painted into the image
        assert [t.box for t in things_a] == [t.box for t in things_b]
        assert len(people_a) == len(people_b) > 0
        for a, b in zip(people_a, people_b):
            assert np.array_equal(a.keypoints, b.keypoints) and a.bbox == b.bbox and a.area == b.area
            assert np.array_equal(a.mask, b.mask) and np.array_equal(a.mpii_joints, b.mpii_joints)


def test_sample_labels_follows_the_label_rules_without_pixels():
    first = sample_labels(CONFIG, "coco_train", 4)
    again = sample_labels(CONFIG, "coco_train", 4)
    assert first.image is None
    assert [p.bbox for p in first.people] == [p.bbox for p in again.people]  # a function of (seed, split, index)
    rendered = render_sample(CONFIG, "coco_train", 4)  # its own random stream: another scene
    assert [p.bbox for p in first.people] != [p.bbox for p in rendered.people]
    people = [p for i in range(12) for p in sample_labels(CONFIG, "coco_val", i).people]
    assert len(people) >= 12
    for person in people:
        v = person.keypoints[:, 2]
        assert set(np.unique(v)) <= {0.0, 1.0, 2.0} and (v > 0).any()
        assert (person.keypoints[v == 0, :2] == 0).all()
        xy = person.keypoints[v > 0, :2]
        assert (xy >= 0).all() and (xy[:, 0] <= WIDTH - 1).all() and (xy[:, 1] <= HEIGHT - 1).all()
        x, y, w, h = person.bbox
        assert min(x, y) >= 0 and x + w <= WIDTH and y + h <= HEIGHT
        assert person.mask.shape == (h, w) and person.area == int(person.mask.sum()) >= CONFIG.min_visible_area
    assert any((p.keypoints[:, 2] == 1).any() for p in people)  # occluded joints happen


def test_label_split_files_are_coco_format_with_the_sizes_asked_for(tmp_path):
    spec = LabelSplit("coco_val", images=14, persons=12, detections=300)
    ann, det = tmp_path / "val.json", tmp_path / "det.json"
    summary = write_label_split(CONFIG, spec, ann, detections=det, workers=1, progress=False)
    assert summary.images == 14 and 12 <= summary.persons <= 12 + CONFIG.people_per_image[1]
    assert 0 < summary.images_with_people < 14  # then images without people, as in COCO
    gt = load_coco_ground_truth(ann)  # evaluation's strict reader: every entry is checked
    assert len(gt.coco.getImgIds()) == 14 and len(gt.coco.getAnnIds()) == summary.persons and not gt.notes
    data = json.loads(ann.read_text())
    assert all(a["segmentation"]["size"] == [HEIGHT, WIDTH] for a in data["annotations"])
    assert summary.keypoints_labelled == sum(a["num_keypoints"] for a in data["annotations"])
    records, report, kset = read_coco_keypoints(ann, tmp_path / "images")
    assert len(records) == summary.persons and report.total == 0 and kset.num_keypoints == 17
    boxes = json.loads(det.read_text())
    assert len(boxes) == summary.detections and 0.6 * 300 <= len(boxes) <= 1.4 * 300
    assert {b["image_id"] for b in boxes} <= set(gt.coco.getImgIds())
    assert len({b["image_id"] for b in boxes}) > summary.images_with_people  # false positives on empty images
    assert all(0 < b["score"] < 1 and b["bbox"][2] > 0 and b["bbox"][3] > 0 for b in boxes)


def test_coco_sizes_scale_down():
    assert (COCO_TRAIN2017.images, COCO_TRAIN2017.persons) == (118_287, 149_813)
    assert COCO_VAL2017.scaled(0.5) == LabelSplit("coco_val", images=2500, persons=3176, detections=52_062)


def test_the_reader_parses_each_annotation_once(realdata, monkeypatch):
    """At COCO's scale the reader's time is its per-annotation parsing: each number list is read once (it was
    twice: once to check, once to use), and a message naming an annotation is built only for a skip."""
    ann = realdata / "coco" / "test_coco.json"
    expected, report, _ = coco_reader.read_coco_keypoints(ann, realdata / "coco")
    calls, shown = [], []
    numbers, show = coco_reader.numbers, coco_reader.show
    monkeypatch.setattr(coco_reader, "numbers", lambda value, count: calls.append(count) or numbers(value, count))
    monkeypatch.setattr(coco_reader, "show", lambda value, *args: shown.append(value) or show(value, *args))
    records, again, _ = coco_reader.read_coco_keypoints(ann, realdata / "coco")
    annotations = json.loads(ann.read_text())["annotations"]
    with_area = sum("area" in a for a in annotations)
    assert sorted(calls) == sorted([4] * len(annotations) + [51] * len(annotations) + [1] * with_area)
    assert len(shown) == report.total  # one message per skipped annotation, none for the kept ones
    assert [(r.key, r.center.tolist(), r.joints.tolist()) for r in records] == [
        (r.key, r.center.tolist(), r.joints.tolist()) for r in expected
    ]
    assert again.as_dict() == report.as_dict()


def test_numbers_accepts_what_it_did_and_only_that():
    big = float(np.finfo(np.float32).max)
    accepted = {(1, 2.5): [1.0, 2.5], (np.float64(2.0), 3): [2.0, 3.0], (2**63 + 5, -0.0): [float(2**63 + 5), -0.0]}
    for value, want in accepted.items():
        assert coco_reader.numbers(list(value), 2).tolist() == np.float32(want).tolist()
    assert coco_reader.numbers([big, 1], 2) is not None
    for bad in ([True, 1], ["1", 2], [None, 1], [float("nan"), 1], [float("inf"), 1], [big * 1.01, 1], [10**400, 1]):
        assert coco_reader.numbers(bad, 2) is None, bad
    assert coco_reader.numbers([1.0], 2) is None and coco_reader.numbers((1.0, 2.0), 2) is None


def test_read_json_pauses_the_collector_and_restores_it(tmp_path):
    path = tmp_path / "a.json"
    path.write_text(json.dumps({"annotations": [{"id": i, "keypoints": [0] * 51} for i in range(2000)]}))
    assert gc.isenabled()
    assert len(read_json(path, "a file")["annotations"]) == 2000 and gc.isenabled()
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        read_json(tmp_path / "bad.json", "a file")
    assert gc.isenabled()
    gc.disable()
    try:
        read_json(path, "a file")
        assert not gc.isenabled()  # a caller's own pause is left alone
    finally:
        gc.enable()


def test_plan_shards_keeps_finished_shards_and_finds_stale_ones(realdata, tmp_path):
    records, report, kset = coco_reader.read_coco_keypoints(realdata / "coco" / "test_coco.json", realdata / "coco")
    config = ShardConfig(samples_per_shard=3, workers=1)
    write_shards(records, kset, tmp_path, "train", config, report, progress=False)
    shards = sorted(p.name for p in tmp_path.glob("train-*.tar"))
    assert len(shards) == -(-len(records) // 3) >= 3
    plan = plan_shards(records[:6], kset, tmp_path, "train", config)  # a smaller run: two shards, both finished
    assert [p.name for p in plan.paths] == shards[:2] and sorted(plan.kept) == [0, 1] and plan.todo == []
    assert [p.name for p in plan.stale] == shards[2:]
    changed = plan_shards(records[1:7], kset, tmp_path, "train", config)  # other records in each shard
    assert changed.kept == {} and changed.todo == [0, 1]
    assert sorted(p.name for p in tmp_path.glob("train-*.tar")) == shards  # planning changes nothing


def test_the_rehearsal_runs_at_a_tiny_scale_and_writes_its_table(tmp_path):
    report = tmp_path / "benchmarks.md"
    report.write_text("# Benchmarks\n\n<!-- models:start -->\nanother script's section\n<!-- models:end -->\n")
    data = tmp_path / "data"
    cmd = [
        sys.executable,
        str(SCRIPT),
        "--scale",
        "0.005",
        "--repeats",
        "1",
        "--data",
        str(data),
        "--report",
        str(report),
    ]
    done = subprocess.run(cmd, cwd=REPO, env={**os.environ, "TQDM_DISABLE": "1"}, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]

    files = data / "scale_0.005"
    train = json.loads((files / "person_keypoints_train.json").read_text())
    assert len(train["images"]) == round(118_287 * 0.005)
    assert sum(a["num_keypoints"] > 0 for a in train["annotations"]) >= round(149_813 * 0.005)
    val = json.loads((files / "person_keypoints_val.json").read_text())
    assert len(val["images"]) == 25 and len(val["annotations"]) >= 32
    boxes = json.loads((files / "val_detections.json").read_text())
    assert 0.6 * 521 <= len(boxes) <= 1.4 * 521
    summary = json.loads((files / "summary.json").read_text())
    results = json.loads((files / "val_results.json").read_text())
    assert len(results) == summary["results"] and all(len(r["keypoints"]) == 51 for r in results)
    with np.load(files / "val_predictions.npz") as preds:
        assert preds["keypoints"].shape == (summary["predictions"], 17, 2) and summary["predictions"] <= len(boxes)

    text = report.read_text()
    assert "another script's section" in section(text, "models")
    body = section(text, "coco_scale")
    assert "benchmarks/coco_scale.py --scale 0.005" in body and "CPU:" in body
    for row in ("reader: `read_coco_keypoints` + `plan_shards`", "`transpose evaluate coco`", "validation path, 2"):
        assert re.search(rf"^\| {re.escape(row)}.*<= \d+ s, <= 2 GiB \| \*\*(PASS|FAIL)\*\*", body, re.M), row
    assert re.search(r"^\| shard writing: .*\*\*\d+\.\d images/s per core\*\*", body, re.M)
    for phase in ("read_plan", "evaluate_cli"):
        assert re.search(rf"^\| {phase} \| .* \| [\d.]+ \| [\d.]+ \| \*\*(PASS|FAIL)\*\*", body, re.M), phase
    ap = float(re.search(r"AP (\d\.\d+), AP50", body).group(1))
    assert 0.2 < ap < 0.98  # fake predictions: neither perfect nor useless
    assert re.search(r"^Targets: .*\*\*(all pass|\d+ of 5 fail)\*\*", body, re.M)
