"""Malformed input gets a clear error naming the file and the entry (or a counted skip with its reason), never a
raw traceback and never a silently wrong number: one regression test per finding of the "sound numbers" issue."""

from __future__ import annotations

import copy
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.io import savemat

from cli.main import main as cli
from dataops.datasets import read_coco_detections, read_coco_keypoints, read_mpii
from dataops.datasets.sources import DatasetSource
from transpose.codec import HeatmapCodec
from transpose.engine.validation import predict, validate
from transpose.evaluation import (
    CocoFormatError,
    MpiiFormatError,
    MpiiGroundTruth,
    NonFiniteError,
    evaluate_coco,
    evaluate_mpii,
    ground_truth_as_results,
    load_coco_ground_truth,
    load_coco_results,
    load_mpii_ground_truth,
)
from transpose.evaluation.protocols import dataset_kind
from transpose.keypoints import COCO, MPII, KeypointSet, KeypointSetError

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def coco_json(realdata) -> dict:
    return json.loads((realdata / "coco" / "test_coco.json").read_text())


@pytest.fixture
def perfect(coco_json) -> list[dict]:
    return ground_truth_as_results(load_coco_ground_truth(coco_json))


def write(path: Path, data) -> Path:
    path.write_text(json.dumps(data))
    return path


def mpii_arrays(realdata) -> tuple[dict, np.ndarray]:
    people = json.loads((realdata / "mpii" / "test_mpii.json").read_text())
    joints = np.array([p["joints"] for p in people], dtype=np.float64)
    vis = np.array([p["joints_vis"] for p in people], dtype=np.float64)
    half = np.linalg.norm(joints[:, 9] - joints[:, 8], axis=1) / math.sqrt(2)
    centre = (joints[:, 9] + joints[:, 8]) / 2
    boxes = np.stack([centre - half[:, None], centre + half[:, None]])
    arrays = {
        "pos_gt_src": joints.transpose(1, 2, 0),
        "jnt_missing": (1 - vis).T,
        "headboxes_src": boxes.transpose(0, 2, 1),
    }
    return arrays, joints - 1.0


# ---------------------------------------------------------------- 1. NaN predictions scored AP 1.000


@pytest.mark.parametrize(
    ("where", "value", "message"),
    [
        (("keypoints", 15), math.nan, r"keypoints\[15\] \(keypoint 5 x\) is NaN"),
        (("keypoints", 1), math.inf, r"keypoints\[1\] \(keypoint 0 y\) is inf"),
        (("keypoints", 2), -math.inf, r"keypoints\[2\] \(keypoint 0 score\) is -inf"),
        (("score",), math.nan, "score is NaN"),
    ],
)
def test_non_finite_results_are_refused_naming_the_entry(tmp_path, perfect, where, value, message):
    results = copy.deepcopy(perfect)
    entry = results[3]
    if len(where) == 2:
        entry[where[0]][where[1]] = value
    else:
        entry[where[0]] = value
    path = write(tmp_path / "results.json", results)
    with pytest.raises(NonFiniteError, match=rf"results\.json: entry #3 \(image_id {entry['image_id']}\): {message}"):
        load_coco_results(path, 17)
    with pytest.raises(NonFiniteError, match=r"<list>: entry #3 .*; fix or drop the entry"):
        load_coco_results(results, 17)


def test_nan_results_no_longer_score_ap_one(coco_json, perfect):
    gt = load_coco_ground_truth(coco_json)
    nan = [{**r, "keypoints": [math.nan] * 51} for r in perfect]
    with pytest.raises(NonFiniteError, match=r"predictions: entry #0 \(image_id \d+\): keypoints\[0\] .* is NaN"):
        evaluate_coco(gt, nan, source="predictions")


def test_cli_evaluate_coco_exits_non_zero_on_nan_results(realdata, tmp_path, perfect, capsys):
    results = write(tmp_path / "results.json", [{**r, "keypoints": [math.nan] * 51} for r in perfect])
    ann = str(realdata / "coco" / "test_coco.json")
    assert cli(["evaluate", "coco", "--ann", ann, "--results", str(results)]) == 2
    err = capsys.readouterr().err
    assert f"error: {results}: entry #0" in err and "is NaN" in err and "Traceback" not in err
    # the installed entry point, as a user runs it
    inf = write(tmp_path / "inf.json", [{**r, "keypoints": [math.inf] * 51} for r in perfect])
    run = subprocess.run(
        [sys.executable, "-m", "cli", "evaluate", "coco", "--ann", ann, "--results", str(inf)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=300,
    )
    assert run.returncode == 2, run.stderr
    assert "inf.json: entry #0" in run.stderr and "is inf" in run.stderr and "Traceback" not in run.stderr


class InfPixelModel(torch.nn.Module):
    """Gaussian heatmaps of 17 keypoints; the first sample's left ear has one inf pixel."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        yy, xx = torch.meshgrid(torch.arange(16.0), torch.arange(12.0), indexing="ij")
        heatmaps = torch.exp(-((xx - 5) ** 2 + (yy - 7) ** 2) / 8).expand(len(images), 17, 16, 12).clone()
        heatmaps[0, 3, 2, 2] = float("inf")
        return heatmaps


def inf_batch() -> dict:
    return {
        "image": torch.zeros(2, 3, 64, 48),
        "center": torch.tensor([[100.0, 100.0], [50.0, 60.0]]),
        "scale": torch.ones(2, 2),
        "geom": torch.ones(2, 8),
        "ids": torch.tensor([[785, 11], [785, 12]]),
    }


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # DARK on the inf pixel, unchecked
def test_one_inf_heatmap_pixel_stops_evaluation_and_validation():
    codec = HeatmapCodec(input_size=(48, 64), heatmap_size=(12, 16))
    unchecked = predict(InfPixelModel(), [inf_batch()], COCO, codec, flip=False, check_finite=False)
    assert not np.isfinite(unchecked["keypoints"][0, 3]).all()  # what DARK makes of it
    with pytest.raises(NonFiniteError, match=r"image_id 785, annotation 11: the heatmap of keypoint 3 \(left_ear\)"):
        predict(InfPixelModel(), [inf_batch()], COCO, codec, flip=False)

    def scorer(preds):
        raise AssertionError("a non-finite prediction reached the scorer")

    with pytest.raises(NonFiniteError, match=r"sample 0 \(image_id 785, annotation 11\): keypoint 3 \(left_ear\)"):
        validate(InfPixelModel(), [inf_batch()], scorer, COCO, codec, flip=False)


def test_scorers_refuse_non_finite_predictions(realdata, tmp_path):
    preds = {
        "keypoints": np.zeros((2, 17, 2)),
        "maxvals": np.ones((2, 17)),
        "box_scores": np.array([1.0, math.nan]),
        "areas": np.full(2, 1e4),
        "image_ids": np.array([785, 785]),
        "ann_ids": np.array([1, 2]),
    }
    score = dataset_kind("coco").scorer(realdata / "coco" / "test_coco.json", COCO)
    with pytest.raises(NonFiniteError, match=r"sample 1 \(image_id 785, annotation 2\): box score is NaN"):
        score(preds)
    arrays, joints = mpii_arrays(realdata)
    savemat(tmp_path / "gt_valid.mat", arrays)
    mpii = dataset_kind("mpii").scorer(tmp_path / "gt_valid.mat", MPII)
    bad = {**preds, "keypoints": joints[:2].copy(), "maxvals": np.ones((2, 16)), "box_scores": np.ones(2)}
    bad["keypoints"][1, 9, 1] = math.inf
    with pytest.raises(NonFiniteError, match=r"sample 1 .*keypoint 9 \(head_top\) y is inf"):
        mpii(bad)
    with pytest.raises(NonFiniteError, match=r"person 0 joint 4 \(left_knee\) x is NaN"):
        nan = joints.copy()
        nan[0, 4, 0] = math.nan
        evaluate_mpii(nan, load_mpii_ground_truth(tmp_path / "gt_valid.mat"))


# ---------------------------------------------------------------- 2. readers: encodings, ids, types


def latin1(path: Path, data) -> Path:
    path.write_bytes(json.dumps(data).replace('"', '"caf\u00e9 ', 1).encode("latin-1"))
    return path


def test_non_utf8_files_are_refused_naming_the_file_and_utf16_is_read(realdata, tmp_path, coco_json, perfect):
    bad = latin1(tmp_path / "gt.json", coco_json)
    for read in (
        lambda: load_coco_ground_truth(bad),
        lambda: read_coco_keypoints(bad, realdata / "coco"),
        lambda: load_coco_results(latin1(tmp_path / "r.json", perfect), 17),
        lambda: read_coco_detections(realdata / "coco" / "test_coco.json", latin1(tmp_path / "d.json", perfect), "."),
    ):
        with pytest.raises(CocoFormatError, match=r"\.json is not UTF-8 text .*save it as UTF-8"):
            read()
    mpii = json.loads((realdata / "mpii" / "test_mpii.json").read_text())
    with pytest.raises(MpiiFormatError, match=r"m\.json is not UTF-8 text"):
        read_mpii(latin1(tmp_path / "m.json", mpii), realdata / "mpii")
    # UTF-16 (PowerShell's `>`) and a UTF-8 BOM are only other spellings of the same file
    (tmp_path / "gt16.json").write_bytes(json.dumps(coco_json).encode("utf-16"))
    (tmp_path / "r_bom.json").write_bytes(b"\xef\xbb\xbf" + json.dumps(perfect).encode())
    gt = load_coco_ground_truth(tmp_path / "gt16.json")
    assert evaluate_coco(gt, load_coco_results(tmp_path / "r_bom.json", 17))[0]["AP"] == pytest.approx(1.0)
    (tmp_path / "deep.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(CocoFormatError, match="deep.json cannot be read as JSON"):
        load_coco_results(tmp_path / "deep.json", 17)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("image_id", 2**63, r"image_id is 9223372036854775808; it must be an integer id"),
        ("image_id", True, "image_id is true"),
        ("image_id", 785.0, "image_id is 785.0"),
        ("category_id", [1], r"category_id is \[1\]"),
        ("score", True, "score is true, not a number"),
        ("score", "0.9", 'score is "0.9", not a number'),
    ],
)
def test_results_ids_and_numbers_are_integers_and_numbers(perfect, field, value, message):
    results = copy.deepcopy(perfect)
    results[1][field] = value
    with pytest.raises(CocoFormatError, match=rf"<list>: entry #1.*: {message}"):
        load_coco_results(results, 17)
    results = copy.deepcopy(perfect)
    results[1]["keypoints"][4] = 10**400
    with pytest.raises(CocoFormatError, match=r"keypoints\[4\] \(keypoint 1 y\) .* too large for a float"):
        load_coco_results(results, 17)


def test_a_wrong_category_id_is_an_error_not_ap_zero(realdata, tmp_path, coco_json, perfect):
    gt = load_coco_ground_truth(coco_json)
    wrong = [{**r, "category_id": 2} for r in perfect]
    with pytest.raises(
        CocoFormatError, match="category_id 2 is not the keypoint category of <dict> .*write category_id 1"
    ):
        evaluate_coco(gt, wrong)
    path = write(tmp_path / "results.json", wrong)
    assert cli(["evaluate", "coco", "--ann", str(realdata / "coco" / "test_coco.json"), "--results", str(path)]) == 2


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d["annotations"][2]["keypoints"].__setitem__(2, -1), "keypoint 0 has visibility -1"),
        (lambda d: d["annotations"][2].__setitem__("iscrowd", "0"), r'iscrowd is "0"; it must be 0 or 1'),
        (lambda d: d["annotations"].append(copy.deepcopy(d["annotations"][2])), "repeats annotation #2"),
        (lambda d: d["images"].append(copy.deepcopy(d["images"][0])), r"id 785 repeats images\[0\]"),
        (lambda d: d["annotations"][2].__setitem__("category_id", None), "category_id null is not the id"),
        (lambda d: d["annotations"][2].__setitem__("category_id", [1]), r"category_id \[1\] is not the id"),
        (lambda d: d["annotations"][2].__setitem__("image_id", "785"), 'image_id "785" is not in'),
        (lambda d: d["annotations"][2].__setitem__("id", 2**64), "annotation ids are integers"),
        (lambda d: d["annotations"][2]["keypoints"].__setitem__(0, math.nan), r"keypoints\[0\] .* is NaN"),
        (lambda d: d["annotations"][2]["keypoints"].__setitem__(0, "12"), r"keypoints\[0\] .* is \"12\""),
        (lambda d: d["annotations"][2]["bbox"].__setitem__(2, -5), "negative width or height"),
        (lambda d: d["annotations"][2].__setitem__("area", 0), "area 0 with 15 labelled keypoints"),
        (lambda d: d["annotations"][2].__setitem__("num_keypoints", 3), "num_keypoints is 3 but 15"),
        (lambda d: d["categories"].append("person"), r"categories\[1\] is \"person\""),
        (lambda d: d["categories"][0].__setitem__("id", "1"), r"categories\[0\]: 'id' is \"1\""),
        (lambda d: d["categories"][0]["keypoints"].__setitem__(3, 7), "'keypoints' must be a non-empty list"),
        (lambda d: d["categories"][0]["skeleton"].__setitem__(0, [1, "2"]), "'skeleton' entry"),
        (lambda d: d["categories"][0].__setitem__("sigmas", [True] * 17), "'sigmas' must be 17 positive numbers"),
        (lambda d: d["annotations"].__setitem__(0, [1, 2]), r"annotation #0 is \[1, 2\]"),
    ],
)
def test_malformed_ground_truth_is_an_error_naming_the_entry(tmp_path, coco_json, mutate, message):
    """Each of these crashed pycocotools (KeyError, TypeError in computeOks...) or was read silently wrong."""
    mutate(coco_json)
    path = write(tmp_path / "gt.json", coco_json)
    with pytest.raises(ValueError, match=message) as err:
        evaluate_coco(load_coco_ground_truth(path), [])
    assert str(path) in str(err.value) and isinstance(err.value, (CocoFormatError, NonFiniteError, KeypointSetError))


def test_ground_truth_fills_missing_ids_and_categories_with_a_note(coco_json, perfect):
    for ann in coco_json["annotations"]:
        ann.pop("id")
        ann.pop("category_id")
    gt = load_coco_ground_truth(coco_json)
    assert any("had no 'id': numbered" in n for n in gt.notes) and any("no 'category_id'" in n for n in gt.notes)
    assert evaluate_coco(gt, perfect)[0]["AP"] == pytest.approx(1.0)


def test_malformed_annotations_are_skipped_and_counted_by_reason(realdata, tmp_path, coco_json):
    anns = coco_json["annotations"]
    anns[0]["keypoints"][2] = -1  # visibility -1 used to become a visible joint (min(v, 1))
    anns[1]["iscrowd"] = "0"  # used to be read as a crowd
    anns[2]["category_id"] = None  # used to vanish uncounted
    anns[3]["category_id"] = [1]  # used to raise TypeError (unhashable)
    anns[4]["image_id"] = math.inf  # used to raise OverflowError in int()
    anns[5]["bbox"] = [10, 10, 1, 1]  # cleaned to 0x0: scale 0
    anns[6]["bbox"] = [10, 10, -50, -50]  # w*h > 0
    anns[7]["keypoints"][0] = "12"  # a string read as a number
    path = write(tmp_path / "gt.json", coco_json)
    records, report, _ = read_coco_keypoints(path, realdata / "coco")
    assert report.counts["malformed annotation"] == 6 and report.counts["degenerate box"] == 2
    assert len(records) + report.total == len(anns)
    assert all((r.scale > 0).all() and set(r.visible.tolist()) <= {0.0, 1.0} for r in records)
    assert any("category_id null" in e for e in report.examples["malformed annotation"])
    coco_json["annotations"].append(copy.deepcopy(coco_json["annotations"][10]))
    with pytest.raises(CocoFormatError, match=r"annotations\[14\].*repeats annotations\[10\]"):
        read_coco_keypoints(write(tmp_path / "dup.json", coco_json), realdata / "coco")
    coco_json["annotations"].pop()
    image = next(i for i in coco_json["images"] if i["id"] == coco_json["annotations"][10]["image_id"])
    image["width"] = math.inf
    records, report, _ = read_coco_keypoints(write(tmp_path / "inf.json", coco_json), realdata / "coco")
    assert report.counts["malformed image entry"] == 1 and report.counts["annotation of an unknown image"] > 0


def test_bad_detections_are_skipped_and_counted_by_reason(realdata, tmp_path):
    dets = json.loads((realdata / "coco" / "test_coco_det_AP_H_56.json").read_text())[:10]
    dets[0]["score"] = math.nan
    dets[1]["score"] = math.inf
    dets[2]["score"] = 7.5
    dets[3]["bbox"] = [5000, 10, 50, 50]  # right of a 640-wide image
    dets[4]["bbox"] = [10, 10, 0, 30]
    dets[5]["category_id"] = None  # used to vanish uncounted
    dets[6]["image_id"] = {"id": 785}
    dets[7]["category_id"] = 3  # another category: not ours, left out
    path = write(tmp_path / "dets.json", dets)
    records, report, _ = read_coco_detections(realdata / "coco" / "test_coco.json", path, realdata / "coco")
    assert report.counts == {
        "detection score not in [0, 1]": 3,
        "box outside the image": 1,
        "degenerate box": 1,
        "malformed detection": 2,
    }
    assert len(records) == 2 and "dets.json: [0]: score NaN" in report.examples["detection score not in [0, 1]"][0]
    assert "box outside the image" in report.summary()


def test_mpii_json_junk_is_skipped_and_counted(realdata, tmp_path):
    entries = json.loads((realdata / "mpii" / "test_mpii.json").read_text())
    entries[0]["joints_vis"][3] = math.nan  # used to be read as "not visible"
    entries[1]["scale"] = 10**400  # used to raise OverflowError
    entries[2]["image"] = None  # used to become the file "None"
    path = write(tmp_path / "mpii.json", entries)
    records, report = read_mpii(path, realdata / "mpii")
    assert report.counts == {"malformed annotation": 3} and len(records) == 2
    assert "joints_vis" in report.examples["malformed annotation"][0]
    (tmp_path / "list.json").write_text('{"not": "a list"}')
    with pytest.raises(MpiiFormatError, match="list.json: expected a JSON list"):
        read_mpii(tmp_path / "list.json", realdata / "mpii")


# ---------------------------------------------------------------- 2. MPII gt_valid.mat and PCKh


@pytest.mark.parametrize(
    ("mutate", "error", "message"),
    [
        (lambda a: a.__setitem__("headboxes_src", a["headboxes_src"][..., :4]), MpiiFormatError, "for the same N"),
        (lambda a: a["headboxes_src"].__setitem__(1, a["headboxes_src"][0]), MpiiFormatError, "has size 0.0"),
        (lambda a: a["headboxes_src"].__setitem__((0, 0, 2), math.nan), MpiiFormatError, "person 2 .* has size nan"),
        (lambda a: a.update({k: v[..., :0] for k, v in a.items()}), MpiiFormatError, r"no people \(N = 0\)"),
        (lambda a: a["jnt_missing"].__setitem__((3, 1), 0.5), MpiiFormatError, "person 1 joint 3 is 0.5"),
        (lambda a: a["pos_gt_src"].__setitem__((9, 0, 4), math.inf), NonFiniteError, r"person 4 joint 9 \(head_top\)"),
        (lambda a: a["jnt_missing"].__setitem__(9, 1), MpiiFormatError, "no person has a visible head_top"),
        (lambda a: a.__setitem__("pos_gt_src", np.array(["abc"])), MpiiFormatError, "pos_gt_src holds <U3 values"),
        (lambda a: a.pop("jnt_missing"), MpiiFormatError, r"lacks \['jnt_missing'\]"),
    ],
)
def test_malformed_gt_valid_mat_is_an_error_naming_the_file(realdata, tmp_path, mutate, error, message):
    arrays, preds = mpii_arrays(realdata)
    mutate(arrays)
    path = tmp_path / "gt_valid.mat"
    savemat(path, arrays)
    with pytest.raises(error, match=message) as err:
        evaluate_mpii(preds, load_mpii_ground_truth(path))
    assert str(path) in str(err.value)


def test_unreadable_mat_files_are_named(realdata, tmp_path):
    arrays, _ = mpii_arrays(realdata)
    savemat(tmp_path / "good.mat", arrays)
    raw = (tmp_path / "good.mat").read_bytes()
    for name, content in (("truncated.mat", raw[: len(raw) // 2]), ("text.mat", b"not a mat file"), ("empty.mat", b"")):
        (tmp_path / name).write_bytes(content)
        with pytest.raises(MpiiFormatError, match=rf"{name} is not a readable MATLAB \.mat file"):
            load_mpii_ground_truth(tmp_path / name)


def test_in_memory_ground_truth_is_checked_too(realdata):
    arrays, preds = mpii_arrays(realdata)
    gt = MpiiGroundTruth(**arrays, source="arrays")
    assert 0 < evaluate_mpii(preds, gt)["PCKh"] <= 100
    with pytest.raises(MpiiFormatError, match=r"arrays.*for the same N"):
        evaluate_mpii(preds[:4], MpiiGroundTruth(**{**arrays, "headboxes_src": arrays["headboxes_src"][..., :4]}))


def test_cli_evaluate_mpii_names_bad_prediction_files(realdata, tmp_path, capsys):
    arrays, preds = mpii_arrays(realdata)
    savemat(tmp_path / "gt_valid.mat", arrays)
    (tmp_path / "preds.json").write_text('{"joints": 1}')
    np.save(tmp_path / "nan.npy", np.full_like(preds, math.nan))
    (tmp_path / "broken.npy").write_bytes(b"\x93NUMPY garbage")
    for name, message in (
        ("preds.json", "not an array of numbers"),
        ("nan.npy", "is NaN"),
        ("broken.npy", "not a readable"),
    ):
        assert cli(["evaluate", "mpii", "--gt", str(tmp_path / "gt_valid.mat"), "--preds", str(tmp_path / name)]) == 2
        err = capsys.readouterr().err
        assert name in err and message in err, err


# ---------------------------------------------------------------- keypoint sets and sources read from files


def test_keypoint_sets_from_manifests_check_their_indices():
    data = COCO.to_dict()
    assert KeypointSet.from_dict(data) == COCO
    for key, value in (("flip_pairs", [[True, 2]]), ("upper_body", ["head"]), ("skeleton", [[0, 99]])):
        with pytest.raises(KeypointSetError, match=rf"manifest.json: {key}"):
            KeypointSet.from_dict({**data, key: value}, where="manifest.json")
    with pytest.raises(KeypointSetError, match="manifest.json: not a keypoint set"):
        KeypointSet.from_dict(["coco"], where="manifest.json")
    with pytest.raises(KeypointSetError, match="sigmas must be 17 positive numbers"):
        KeypointSet.from_dict({**data, "sigmas": ["0.1"] * 17}, where="manifest.json")


def test_source_sigmas_must_be_positive_numbers():
    spec = {
        "kind": "coco",
        "train": {"annotations": "a.json", "images": "i"},
        "val": {"annotations": "b", "images": "i"},
    }
    for sigmas in ([True] * 17, [math.nan] * 17, [0.1, "0.1"], [10**400]):
        with pytest.raises(ValueError, match="sigmas must be a list of positive numbers"):
            DatasetSource.from_dict("mine", {**spec, "sigmas": sigmas}, "data.datasets")
