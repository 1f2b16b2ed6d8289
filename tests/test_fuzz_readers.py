"""Property-based fuzzing of every reader and evaluator (hypothesis): mutated versions of small valid files.

Each mutated file must either read (and score) to a sane result, or raise the project's own error (a ValueError
subclass) whose message names the file. Any other exception is a raw crash; a result out of range, a non-finite
number that got through, or a harmless mutation that changes the number is a silent wrong result. Runs are
reproducible (derandomized, no example database) and bounded: the whole file takes well under a minute.

Mutations are made at the level of the parsed document (delete a key or element, put in junk: NaN, inf, huge
ints, bools, strings, nested containers; duplicate an element, a number as a string) and of the bytes (UTF-8
with a BOM, UTF-16, Latin-1, a stray byte, truncation, a 5000-digit number, nesting deeper than the stack).
"""

from __future__ import annotations

import copy
import io
import json
import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st
from scipy.io import savemat

from dataops.datasets import read_coco_detections, read_coco_keypoints, read_mpii
from transpose.evaluation import (
    CocoFormatError,
    MpiiFormatError,
    MpiiGroundTruth,
    NonFiniteError,
    evaluate_coco,
    evaluate_mpii,
    load_coco_ground_truth,
    load_coco_results,
    load_mpii_ground_truth,
)
from transpose.keypoints import COCO_SIGMAS, KeypointSetError

DATA = Path(__file__).resolve().parent / "data" / "realdata"
OWN_ERRORS = (CocoFormatError, MpiiFormatError, NonFiniteError, KeypointSetError)


def fuzz(max_examples: int):
    return settings(
        max_examples=max_examples,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


# ---------------------------------------------------------------- the small valid documents mutated here


def coco_doc() -> dict:
    """Two images of the COCO fixture with their people (segmentations dropped): 4 images' worth is not needed."""
    data = json.loads((DATA / "coco" / "test_coco.json").read_text())
    images = data["images"][:2]
    ids = {img["id"] for img in images}
    anns = [{**a, "segmentation": []} for a in data["annotations"] if a["image_id"] in ids]
    return {"images": images, "annotations": anns, "categories": data["categories"]}


def coco_results(doc: dict) -> list[dict]:
    """A prediction per labelled person, moved so that its OKS is between 0.55 and 0.95 (AP strictly inside 0..1)."""
    results = []
    labelled = [a for a in doc["annotations"] if a["num_keypoints"] > 0]
    for n, ann in enumerate(labelled):
        oks = 0.95 - 0.4 * n / max(len(labelled) - 1, 1)
        kpts = np.array(ann["keypoints"], dtype=np.float64).reshape(-1, 3)
        kpts[:, 0] += np.sqrt(-2 * math.log(oks) * (2 * np.array(COCO_SIGMAS)) ** 2 * ann["area"])
        kpts[:, 2] = 1.0
        results.append(
            {"image_id": ann["image_id"], "category_id": 1, "keypoints": kpts.ravel().tolist(), "score": oks}
        )
    results.append({"image_id": labelled[0]["image_id"], "category_id": 1, "keypoints": [5.0] * 51, "score": 0.99})
    return results


def detections_doc() -> list[dict]:
    dets = json.loads((DATA / "coco" / "test_coco_det_AP_H_56.json").read_text())
    return dets[:12]


def mpii_doc() -> list[dict]:
    return json.loads((DATA / "mpii" / "test_mpii.json").read_text())


def mpii_arrays() -> tuple[dict[str, np.ndarray], np.ndarray]:
    """gt_valid.mat arrays from the MPII fixture (head box: the square on the neck -> head-top segment), and
    0-based predictions that miss a few joints."""
    people = mpii_doc()
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
    preds = joints - 1.0
    preds[0, 10] += 200.0
    preds[2, 4] += 40.0
    return arrays, preds


COCO_DOC = coco_doc()
COCO_RESULTS = coco_results(COCO_DOC)
DETECTIONS = detections_doc()
MPII_DOC = mpii_doc()
MPII_ARRAYS, MPII_PREDS = mpii_arrays()
MPII_GT = MpiiGroundTruth(**copy.deepcopy(MPII_ARRAYS))
FIXTURE_IMAGE_IDS = {img["id"] for img in json.loads((DATA / "coco" / "test_coco.json").read_text())["images"]}


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


@pytest.fixture(scope="module")
def base_gt(work) -> object:
    path = work / "base_gt.json"
    path.write_text(json.dumps(COCO_DOC))
    return load_coco_ground_truth(path)


@pytest.fixture(scope="module")
def baseline_ap(base_gt) -> float:
    metrics, _ = evaluate_coco(base_gt, COCO_RESULTS)
    assert 0.2 < metrics["AP"] < 0.95
    return metrics["AP"]


# ---------------------------------------------------------------- mutations


def all_paths(node, prefix=()) -> list[tuple]:
    paths = [prefix]
    if isinstance(node, dict):
        for key, value in node.items():
            paths += all_paths(value, (*prefix, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            paths += all_paths(value, (*prefix, index))
    return paths


def path_strategy(doc) -> st.SearchStrategy:
    """A path into `doc`, each field pattern (indices folded) equally likely: ids as often as keypoints."""
    groups: dict[tuple, list[tuple]] = {}
    for path in all_paths(doc):
        groups.setdefault(tuple("#" if isinstance(p, int) else p for p in path), []).append(path)
    patterns = sorted(groups, key=repr)
    return st.sampled_from(patterns).flatmap(lambda pattern: st.sampled_from(groups[pattern]))


JUNK = st.one_of(
    st.sampled_from(
        [
            math.nan,
            math.inf,
            -math.inf,
            2**63,
            2**64 + 1,
            -(2**63) - 1,
            10**400,
            True,
            False,
            None,
            "0",
            "1",
            "",
            "abc",
            [],
            {},
            [[]],
            {"id": 1},
            -1,
            0,
            1,
            2,
            3,
            7.5,
            0.5,
            -0.0,
            1e308,
            -1e308,
            5e-324,
            1e-30,
        ]
    ),
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=4),
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3),
        max_leaves=6,
    ),
)


def mutation_ops(doc) -> st.SearchStrategy:
    paths = path_strategy(doc)
    op = st.one_of(
        st.tuples(st.just("delete"), paths),
        st.tuples(st.just("replace"), paths, JUNK),
        st.tuples(st.just("duplicate"), paths),
        st.tuples(st.just("stringify"), paths),
    )
    return st.lists(op, min_size=1, max_size=3)


def apply_ops(doc, ops):
    """A mutated deep copy of doc; ops whose path no longer exists are passed over."""
    doc = copy.deepcopy(doc)
    for op in ops:
        kind, path = op[0], op[1]
        if not path:
            if kind == "replace":
                doc = op[2]
            continue
        parent = doc
        try:
            for key in path[:-1]:
                parent = parent[key]
            value = parent[path[-1]]
        except (KeyError, IndexError, TypeError):
            continue
        last = path[-1]
        if kind == "delete":
            del parent[last]
        elif kind == "replace":
            parent[last] = copy.deepcopy(op[2])
        elif kind == "duplicate" and isinstance(parent, list):
            parent.append(copy.deepcopy(value))
        elif kind == "stringify" and not isinstance(value, (dict, list)):
            parent[last] = str(value)
    return doc


ENCODINGS = st.sampled_from(
    ["utf-8"] * 6 + ["utf-8-sig", "utf-16", "latin-1", "stray-byte", "truncate", "long-int", "deep", "empty"]
)


def encode(doc, how: str, where: float) -> bytes:
    """doc as JSON bytes, mangled as `how` says; `where` (0..1) picks the place of a cut or a stray byte."""
    text = json.dumps(doc)
    raw = text.encode()
    at = int(len(raw) * where)
    if how == "utf-8-sig":
        return b"\xef\xbb\xbf" + raw
    if how == "utf-16":
        return text.encode("utf-16")
    if how == "latin-1":
        return text.replace('"', '"caf\u00e9 ', 1).encode("latin-1", errors="replace")
    if how == "stray-byte":
        return raw[:at] + b"\xff\xc3" + raw[at:]
    if how == "truncate":
        return raw[:at]
    if how == "long-int":
        return raw.replace(b"1", b"1" * 5000, 1)
    if how == "deep":
        return b"[" * 200_000 + b"]" * 200_000
    if how == "empty":
        return b""
    return raw


def harmless(doc):
    """Equivalent spellings of the same content: the number must not change."""
    return st.sampled_from(["utf-8-sig", "utf-16", "indent", "extra-key", "floats", "reverse"]).map(
        lambda how: (how, respell(doc, how))
    )


def respell(doc, how: str) -> bytes:
    doc = copy.deepcopy(doc)
    if how == "extra-key":
        for entry in doc if isinstance(doc, list) else doc["annotations"] + doc["images"]:
            entry["comment"] = {"by": "fuzz", "values": [1, None]}
    if how == "floats":  # 367 -> 367.0 in coordinates (ids stay integers)
        for entry in doc if isinstance(doc, list) else doc["annotations"]:
            for key in ("keypoints", "bbox", "center"):
                if key in entry:
                    entry[key] = [float(v) for v in entry[key]]
    if how == "reverse":
        if isinstance(doc, list):
            doc.reverse()
        else:
            doc["annotations"].reverse()
            doc["images"].reverse()
    text = json.dumps(doc, indent=2 if how == "indent" else None)
    if how == "utf-16":
        return text.encode("utf-16")
    return (b"\xef\xbb\xbf" if how == "utf-8-sig" else b"") + text.encode()


def refused_or_done(call, *names: str):
    """(True, value) when call() succeeds, (False, err) when it raises the project's own error naming one of
    `names`; any other exception fails the test as a raw crash."""
    try:
        value = call()
    except OWN_ERRORS as err:
        assert any(name in str(err) for name in names), f"error does not name {names}: {err}"
        assert isinstance(err, ValueError)
        event(f"refused: {type(err).__name__}")
        return False, err
    except Exception as err:  # the property: nothing else escapes
        pytest.fail(f"raw crash: {type(err).__name__}: {err}")
    event("accepted")
    return True, value


def assert_coco_metrics(metrics: dict) -> None:
    assert set(metrics) >= {"AP", "AP50", "AR"}
    bad = {k: v for k, v in metrics.items() if not (math.isfinite(v) and 0.0 <= v <= 1.0)}
    assert not bad, f"silent wrong result: metrics out of [0, 1]: {bad}"


def assert_sane_ground_truth(gt) -> None:
    """What reaches pycocotools: finite floats, visibilities 0/1/2, crowd 0/1, unique integer ids."""
    anns = [a for a in gt.coco.dataset["annotations"] if a["category_id"] == gt.category_id]
    ids = [a["id"] for a in gt.coco.dataset["annotations"]]
    assert len(ids) == len(set(ids))
    for ann in anns:
        kpts = np.asarray(ann["keypoints"], dtype=np.float64).reshape(-1, 3)
        assert np.isfinite(kpts).all() and set(kpts[:, 2].tolist()) <= {0.0, 1.0, 2.0}
        assert ann["iscrowd"] in (0, 1) and math.isfinite(ann["area"]) and ann["area"] >= 0
        assert np.isfinite(ann["bbox"]).all()


def assert_sane_records(records, k: int) -> None:
    keys = [r.key for r in records]
    assert len(keys) == len(set(keys)), "duplicate sample keys"
    for r in records:
        assert r.center.shape == (2,) and np.isfinite(r.center).all()
        assert r.scale.shape == (2,) and np.isfinite(r.scale).all() and (r.scale > 0).all()
        assert r.joints.shape == (k, 2) and np.isfinite(r.joints).all()
        assert set(r.visible.tolist()) <= {0.0, 1.0}
        assert math.isfinite(r.score) and 0.0 <= r.score <= 1.0
        assert "." not in r.key


# ---------------------------------------------------------------- COCO keypoint ground truth (both readers)


def integer_id(value) -> bool:
    return type(value) is int and -(2**63) <= value < 2**63


def other_category(entry, category: int, categories: set | None = None) -> bool:
    """An entry of another (valid) category than the keypoint one: left out uncounted, by design."""
    cat = entry.get("category_id", category) if isinstance(entry, dict) else category
    return integer_id(cat) and cat != category and (categories is None or cat in categories)


@fuzz(300)
@given(ops=mutation_ops(COCO_DOC), how=ENCODINGS, where=st.floats(0, 1))
@example(ops=[("replace", ("annotations", 0, "keypoints", 2), -1)], how="utf-8", where=0.0)  # visibility -1
@example(ops=[("replace", ("annotations", 0, "iscrowd"), "0")], how="utf-8", where=0.0)  # "0" read as crowd
@example(ops=[("duplicate", ("annotations", 1))], how="utf-8", where=0.0)  # duplicate annotation ids
@example(ops=[("replace", ("annotations", 0, "category_id"), [1])], how="utf-8", where=0.0)  # unhashable
@example(ops=[("replace", ("annotations", 0, "id"), 2**64)], how="utf-8", where=0.0)  # beyond int64
@example(ops=[("replace", ("categories", 0, "id"), "1")], how="utf-8", where=0.0)  # a string id
@example(ops=[("replace", ("categories", 0, "skeleton", 0), {"a": 1})], how="utf-8", where=0.0)
@example(ops=[("replace", ("categories", 0, "keypoints", 3), 7)], how="utf-8", where=0.0)
@example(ops=[("replace", ("annotations", 0, "bbox", 2), -30)], how="utf-8", where=0.0)
@example(ops=[("replace", ("annotations", 0, "area"), 0)], how="utf-8", where=0.0)
@example(ops=[("replace", ("images", 0, "width"), math.inf)], how="utf-8", where=0.0)
@example(ops=[("replace", ("images",), [5])], how="utf-16", where=0.0)
@example(ops=[("delete", ("annotations", 0, "id"))], how="latin-1", where=0.0)
@example(ops=[("delete", ("annotations", 0, "id"))], how="utf-8", where=0.0)  # KeyError in pycocotools
@example(ops=[("delete", ("annotations",))], how="utf-16", where=0.0)  # UnicodeDecodeError
def test_coco_ground_truth_readers(work, ops, how, where):
    path = work / "gt.json"
    doc = apply_ops(COCO_DOC, ops)
    path.write_bytes(encode(doc, how, where))
    ok, gt = refused_or_done(lambda: load_coco_ground_truth(path), str(path))
    if ok:
        assert_sane_ground_truth(gt)
        ok, out = refused_or_done(lambda: evaluate_coco(gt, COCO_RESULTS, source="results"), str(path))
        if ok:
            assert_coco_metrics(out[0])
    ok, out = refused_or_done(lambda: read_coco_keypoints(path, DATA / "coco"), str(path))
    if ok:
        records, report, kset = out
        assert_sane_records(records, kset.num_keypoints)
        categories = {c["id"] for c in doc["categories"]}
        category = next(c["id"] for c in doc["categories"] if isinstance(c, dict) and c.get("keypoints"))
        silent = sum(other_category(a, category, categories) for a in doc["annotations"])
        counted = report.total - report.counts["malformed image entry"]
        assert len(records) + counted + silent == len(doc["annotations"]), "an annotation vanished uncounted"


@fuzz(15)
@given(spelling=harmless(COCO_DOC))
def test_coco_ground_truth_harmless_respellings_keep_the_number(work, baseline_ap, spelling):
    how, raw = spelling
    path = work / "gt_same.json"
    path.write_bytes(raw)
    metrics, _ = evaluate_coco(load_coco_ground_truth(path), COCO_RESULTS)
    assert metrics["AP"] == pytest.approx(baseline_ap, abs=1e-12), how
    records, report, _ = read_coco_keypoints(path, DATA / "coco")
    assert len(records) + report.total == len(COCO_DOC["annotations"])


# ---------------------------------------------------------------- COCO detections


@fuzz(250)
@given(ops=mutation_ops(DETECTIONS), how=ENCODINGS, where=st.floats(0, 1))
@example(ops=[("replace", (0, "score"), math.nan)], how="utf-8", where=0.0)
@example(ops=[("replace", (0, "score"), 7.5)], how="utf-8", where=0.0)
@example(ops=[("replace", (0, "bbox", 2), 1e-30)], how="utf-8", where=0.0)  # scale 0
@example(ops=[("replace", (0, "bbox", 0), 5000)], how="utf-8", where=0.0)  # outside the image
@example(ops=[("replace", (0, "category_id"), None)], how="utf-8", where=0.0)  # dropped uncounted before
@example(ops=[("replace", (0, "image_id"), [785])], how="utf-8", where=0.0)
@example(ops=[("replace", (0, "category_id"), math.nan)], how="utf-8", where=0.0)  # vanished uncounted
@example(ops=[("delete", (0, "bbox"))], how="long-int", where=0.0)  # ValueError of int() over 4300 digits
def test_detection_reader(work, ops, how, where):
    path = work / "dets.json"
    doc = apply_ops(DETECTIONS, ops)
    path.write_bytes(encode(doc, how, where))
    ok, out = refused_or_done(
        lambda: read_coco_detections(DATA / "coco" / "test_coco.json", path, DATA / "coco"), str(path)
    )
    if not ok:
        return
    records, report, kset = out
    assert_sane_records(records, kset.num_keypoints)
    assert all(r.image_id in FIXTURE_IMAGE_IDS for r in records)
    other = sum(other_category(d, 1) for d in doc)
    assert len(records) + report.total + other == len(doc), "a detection vanished uncounted"


@fuzz(10)
@given(spelling=harmless(DETECTIONS))
def test_detection_harmless_respellings_keep_the_boxes(work, spelling):
    how, raw = spelling
    path = work / "dets_same.json"
    path.write_bytes(raw)
    records, report, _ = read_coco_detections(DATA / "coco" / "test_coco.json", path, DATA / "coco")
    assert report.total == 0 and len(records) == len(DETECTIONS), how
    assert sorted(r.score for r in records) == sorted(d["score"] for d in DETECTIONS)


# ---------------------------------------------------------------- COCO results and OKS AP


@fuzz(300)
@given(ops=mutation_ops(COCO_RESULTS), how=ENCODINGS, where=st.floats(0, 1))
@example(ops=[("replace", (0, "keypoints", 0), math.nan)], how="utf-8", where=0.0)  # NaN scored AP 1.000
@example(ops=[("replace", (0, "score"), math.inf)], how="utf-8", where=0.0)
@example(ops=[("replace", (0, "image_id"), 2**63)], how="utf-8", where=0.0)  # passed, then crashed
@example(ops=[("replace", (0, "image_id"), True)], how="utf-8", where=0.0)
@example(ops=[("replace", (0, "category_id"), 2)], how="utf-8", where=0.0)  # AP 0.000 without a word
@example(ops=[("replace", (0, "keypoints", 4), 10**400)], how="utf-8", where=0.0)
@example(ops=[("replace", (0, "category_id"), [])], how="utf-8", where=0.0)  # unhashable
@example(ops=[("replace", (0,), math.nan)], how="utf-8", where=0.0)  # an entry that is not an object
@example(ops=[("replace", (0, "score"), None)], how="utf-8", where=0.0)
@example(ops=[("replace", (0, "keypoints", 0), 2**64 + 1)], how="utf-8", where=0.0)
def test_results_reader_and_oks_ap(work, base_gt, ops, how, where):
    path = work / "results.json"
    doc = apply_ops(COCO_RESULTS, ops)
    path.write_bytes(encode(doc, how, where))
    ok, results = refused_or_done(lambda: load_coco_results(path, 17, category_id=1), str(path))
    if ok:
        for r in results:
            assert np.isfinite(r["keypoints"]).all() and math.isfinite(r["score"])
        ok, out = refused_or_done(lambda: evaluate_coco(base_gt, results, source=str(path)), str(path))
        if ok:
            assert_coco_metrics(out[0])
    # the evaluator on the same entries handed over in memory, without the reader
    ok, out = refused_or_done(lambda: evaluate_coco(base_gt, copy.deepcopy(doc), source="fuzzed list"), "fuzzed list")
    if ok:
        assert_coco_metrics(out[0])


@fuzz(15)
@given(spelling=harmless(COCO_RESULTS))
def test_results_harmless_respellings_keep_the_number(work, base_gt, baseline_ap, spelling):
    how, raw = spelling
    path = work / "results_same.json"
    path.write_bytes(raw)
    metrics, _ = evaluate_coco(base_gt, load_coco_results(path, 17, category_id=1))
    assert metrics["AP"] == pytest.approx(baseline_ap, abs=1e-12), how


# ---------------------------------------------------------------- MPII json


@fuzz(250)
@given(ops=mutation_ops(MPII_DOC), how=ENCODINGS, where=st.floats(0, 1))
@example(ops=[("replace", (0, "joints_vis", 3), math.nan)], how="utf-8", where=0.0)  # was read as not visible
@example(ops=[("replace", (0, "scale"), 10**400)], how="utf-8", where=0.0)
@example(ops=[("replace", (0, "image"), None)], how="utf-8", where=0.0)
@example(ops=[("replace", (1, "joints", 2), [math.inf, 3])], how="utf-16", where=0.0)
@example(ops=[("delete", (0, "center"))], how="deep", where=0.0)  # RecursionError
@example(ops=[("delete", (0, "center"))], how="utf-8-sig", where=0.0)  # a BOM was "not valid JSON"
def test_mpii_json_reader(work, ops, how, where):
    path = work / "mpii.json"
    doc = apply_ops(MPII_DOC, ops)
    path.write_bytes(encode(doc, how, where))
    ok, out = refused_or_done(lambda: read_mpii(path, DATA / "mpii"), str(path))
    if ok:
        records, report = out
        assert_sane_records(records, 16)
        assert len(records) + report.total == len(doc), "an entry vanished uncounted"


@fuzz(10)
@given(spelling=harmless(MPII_DOC))
def test_mpii_json_harmless_respellings_keep_the_records(work, spelling):
    how, raw = spelling
    path = work / "mpii_same.json"
    path.write_bytes(raw)
    records, report = read_mpii(path, DATA / "mpii")
    assert report.total == 0 and len(records) == len(MPII_DOC), how


# ---------------------------------------------------------------- MPII gt_valid.mat and PCKh

MAT_JUNK = st.sampled_from([math.nan, math.inf, -math.inf, 0.0, -1.0, 2.0, 0.5, 1e308, -1e308])
ARRAY_OPS = st.one_of(
    st.tuples(st.just("set"), st.sampled_from(sorted(MPII_ARRAYS)), st.integers(0, 10**6), MAT_JUNK),
    st.tuples(st.just("drop"), st.sampled_from(sorted(MPII_ARRAYS))),
    st.tuples(st.just("people"), st.sampled_from(sorted(MPII_ARRAYS)), st.integers(0, 6)),  # keep the first n
    st.tuples(st.just("transpose"), st.sampled_from(sorted(MPII_ARRAYS))),
    st.tuples(
        st.just("kind"), st.sampled_from(sorted(MPII_ARRAYS)), st.sampled_from(["str", "complex", "cell", "empty"])
    ),
    st.tuples(st.just("all people"), st.sampled_from(["zero head", "no head_top", "all missing"])),
)
MAT_BYTES = st.sampled_from(["none"] * 5 + ["truncate", "flip", "garbage", "empty"])


def numeric(a: np.ndarray) -> bool:
    return a.dtype.kind in "fiub"


def mutate_arrays(arrays: dict, ops) -> dict:
    arrays = {k: v.copy() for k, v in arrays.items()}
    for op in ops:
        kind = op[0]
        if kind == "all people":
            key = "headboxes_src" if op[1] == "zero head" else "jnt_missing"
            a = arrays.get(key)
            if a is None or not numeric(a) or a.ndim < 2 or len(a) < (2 if key == "headboxes_src" else 10):
                continue
            if op[1] == "zero head":
                a[1] = a[0]
            elif op[1] == "no head_top":
                a[9] = 1
            else:
                a[:] = 1
            continue
        key = op[1]
        if key not in arrays:
            continue
        a = arrays[key]
        if kind == "set" and a.size and a.dtype.kind == "f":
            a.reshape(-1)[op[2] % a.size] = op[3]
        elif kind == "drop":
            del arrays[key]
        elif kind == "people" and a.ndim:
            arrays[key] = a[..., : op[2]]
        elif kind == "transpose":
            arrays[key] = a.T
        elif kind == "kind" and numeric(a):
            replace = {
                "str": lambda _: np.array(["abc"]),
                "complex": lambda a: a.astype(np.complex128) + 1j,
                "cell": lambda _: np.array([[np.zeros(2), "x"]], dtype=object),
                "empty": lambda _: np.zeros((0,)),
            }
            arrays[key] = replace[op[2]](a)
    return arrays


def mat_bytes(arrays: dict, how: str, where: float) -> bytes:
    out = io.BytesIO()
    savemat(out, {"dataset_joints": np.array([["rank"]], dtype=object), **arrays})
    raw = out.getvalue()
    at = int(len(raw) * where)
    if how == "truncate":
        return raw[:at]
    if how == "flip":
        return raw[:at] + bytes([raw[at] ^ 0xFF]) + raw[at + 1 :] if at < len(raw) else raw
    if how == "garbage":
        return b"MATLAB 5.0 MAT-file" + bytes(range(256)) * 4
    if how == "empty":
        return b""
    return raw


@fuzz(250)
@given(ops=st.lists(ARRAY_OPS, min_size=1, max_size=3), how=MAT_BYTES, where=st.floats(0, 1))
@example(ops=[("people", "headboxes_src", 4)], how="none", where=0.0)  # head box count mismatch: broadcast error
@example(ops=[("all people", "zero head")], how="none", where=0.0)  # joints silently counted as misses
@example(ops=[("set", "headboxes_src", 0, math.nan)], how="none", where=0.0)
@example(
    ops=[("people", "pos_gt_src", 0), ("people", "jnt_missing", 0), ("people", "headboxes_src", 0)],
    how="none",
    where=0.0,
)  # N = 0
@example(ops=[("all people", "no head_top")], how="none", where=0.0)  # a NaN part
@example(ops=[("drop", "jnt_missing")], how="truncate", where=0.5)  # scipy's own errors, unnamed
def test_mpii_mat_reader_and_pckh(work, ops, how, where):
    path = work / "gt_valid.mat"
    path.write_bytes(mat_bytes(mutate_arrays(MPII_ARRAYS, ops), how, where))
    ok, gt = refused_or_done(lambda: load_mpii_ground_truth(path), str(path))
    if not ok:
        return
    ok, metrics = refused_or_done(lambda: evaluate_mpii(MPII_PREDS, gt), str(path), "predictions")
    if ok:
        bad = {k: v for k, v in metrics.items() if not (math.isfinite(v) and 0.0 <= v <= 100.0)}
        assert not bad, f"silent wrong result: PCKh out of [0, 100]: {bad}"


def test_mpii_mat_harmless_respellings_keep_the_number(work):
    expected = evaluate_mpii(MPII_PREDS, MPII_GT)
    assert 50 < expected["PCKh"] < 100
    for name, save in (
        ("compressed", lambda p: savemat(p, MPII_ARRAYS, do_compression=True)),
        (
            "uint8 flags",
            lambda p: savemat(p, {**MPII_ARRAYS, "jnt_missing": MPII_ARRAYS["jnt_missing"].astype(np.uint8)}),
        ),
        ("extra variable", lambda p: savemat(p, {**MPII_ARRAYS, "notes": np.array(["x"])})),
    ):
        path = work / f"gt_{name.replace(' ', '_')}.mat"
        save(path)
        assert evaluate_mpii(MPII_PREDS, load_mpii_ground_truth(path)) == pytest.approx(expected), name


PRED_OPS = st.one_of(
    st.tuples(st.just("set"), st.integers(0, 10**6), MAT_JUNK),
    st.tuples(st.just("shape"), st.sampled_from(["people", "joints", "flat", "3d"])),
    st.tuples(st.just("dtype"), st.sampled_from(["object", "str", "bool", "int"])),
)


@fuzz(150)
@given(ops=st.lists(PRED_OPS, min_size=1, max_size=3))
@example(ops=[("set", 3, math.nan)])
@example(ops=[("set", 7, math.inf)])
def test_pckh_on_mutated_predictions(ops):
    preds = MPII_PREDS.copy()
    for op in ops:
        if op[0] == "set" and preds.size and preds.dtype.kind == "f":
            preds.reshape(-1)[op[1] % preds.size] = op[2]
        elif op[0] == "shape" and preds.ndim == 3:
            reshape = {
                "people": lambda a: a[:-1],
                "joints": lambda a: a[:, :15],
                "flat": lambda a: a.reshape(-1),
                "3d": lambda a: a[..., None],
            }
            preds = reshape[op[1]](preds)
        elif op[0] == "dtype" and preds.dtype.kind == "f":
            with np.errstate(invalid="ignore"):
                preds = {"object": object, "str": str, "bool": bool, "int": np.int64}[op[1]]
                preds = MPII_PREDS.astype(preds) if op[1] != "bool" else MPII_PREDS > 0
    ok, metrics = refused_or_done(lambda: evaluate_mpii(preds, MPII_GT), "predictions")
    if ok:
        assert all(math.isfinite(v) and 0.0 <= v <= 100.0 for v in metrics.values()), metrics
