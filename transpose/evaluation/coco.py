"""COCO keypoint evaluation (OKS AP with pycocotools) for any COCO-format keypoint file.

Ground truth is checked and normalised before evaluation, and every change is reported: a missing `area` is
derived from the box (w*h), a boolean `iscrowd` becomes 0/1, a missing `num_keypoints` is counted from the
visibilities, a missing `category_id` is the keypoint category's, a missing annotation `id` is numbered. Anything
else that pycocotools would crash on or silently misread (NaN, strings for numbers, visibility -1, "0" as
iscrowd, duplicate ids, a labelled person of area 0) is a CocoFormatError (NonFiniteError for NaN/inf) naming
the file, the entry and what to fix. Predictions go through the reference's rescoring (box score x mean of
keypoint maxvals above 0.2) and hard OKS-NMS at 0.9 before being written in the standard COCO results format:
[{"image_id", "category_id", "keypoints": [x1, y1, s1, ...], "score"}].
"""

from __future__ import annotations

import contextlib
import copy
import io
import math
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from transpose.evaluation.json_input import (
    _MISSING,
    CocoFormatError,
    finite_number,
    is_id,
    read_json,
    show,
)
from transpose.evaluation.oks import NonFiniteError, oks_nms
from transpose.keypoints import KeypointSet, from_coco_category

COCO_METRIC_NAMES = ("AP", "AP50", "AP75", "APm", "APl", "AR", "AR50", "AR75", "ARm", "ARl")
RESULTS_HINT = 'expected a JSON list of {"image_id", "category_id", "keypoints": [x, y, score, ...], "score"}'


@dataclass
class CocoGroundTruth:
    """A pycocotools COCO index over a normalised keypoint file, with what normalisation changed."""

    coco: COCO
    keypoint_set: KeypointSet
    source: str
    notes: list[str] = field(default_factory=list)

    @property
    def category_id(self) -> int:
        """The id of the keypoint category (the file's first category that lists keypoint names)."""
        return next(int(c["id"]) for c in self.coco.dataset["categories"] if c.get("keypoints"))


def _unique_ids(entries: list, name: str, key: str, what: str) -> set[int]:
    """The integer ids of `entries` (objects), each unique; anything else is an error naming the entry."""
    seen: dict[int, int] = {}
    for index, entry in enumerate(entries):
        where = f"{name}: {key}[{index}]"
        if not isinstance(entry, dict):
            raise CocoFormatError(f"{where} is {show(entry)}; each entry of '{key}' is an object with an integer 'id'")
        value = entry.get("id", _MISSING)
        if not is_id(value):
            raise CocoFormatError(f"{where}: 'id' is {show(value)}; {what} ids are integers (below 2^63)")
        if value in seen:
            raise CocoFormatError(f"{where}: id {value} repeats {key}[{seen[value]}]; {what} ids must be unique")
        seen[value] = index
    return set(seen)


def _annotation_ids(annotations: list, name: str) -> int:
    """Check that annotations are objects with unique integer ids (or none); returns the first free id."""
    seen: dict[int, int] = {}
    for index, ann in enumerate(annotations):
        where = f"{name}: annotation #{index}"
        if not isinstance(ann, dict):
            raise CocoFormatError(f"{where} is {show(ann)}; an annotation is an object (id, image_id, keypoints, ...)")
        if "id" not in ann:
            continue
        if not is_id(ann["id"]):
            raise CocoFormatError(f"{where}: 'id' is {show(ann['id'])}; annotation ids are integers (below 2^63)")
        if ann["id"] in seen:
            raise CocoFormatError(
                f"{where}: id {ann['id']} repeats annotation #{seen[ann['id']]}; annotation ids must be unique "
                "(a duplicated annotation is counted twice)"
            )
        seen[ann["id"]] = index
    return max(seen, default=0) + 1


def _keypoint_values(kpts, where: str, k: int) -> list[float]:
    """[x, y, v] x k as floats (v an int in 0, 1, 2), or an error naming the bad value."""
    if not isinstance(kpts, list) or len(kpts) != 3 * k:
        raise CocoFormatError(f"{where}: 'keypoints' must be a list of {3 * k} numbers (x, y, v) x {k}")
    fix = "fix or drop the annotation"
    values = [
        finite_number(v, where, f"keypoints[{i}] (keypoint {i // 3} {'xyv'[i % 3]})", fix) for i, v in enumerate(kpts)
    ]
    for j in range(k):
        if values[3 * j + 2] not in (0.0, 1.0, 2.0):
            raise CocoFormatError(
                f"{where}: keypoint {j} has visibility {show(kpts[3 * j + 2])}; COCO visibilities are 0 (not "
                "labelled), 1 (labelled, not visible) or 2 (visible)"
            )
        values[3 * j + 2] = int(values[3 * j + 2])
    return values


def _normalise_annotation(ann: dict, where: str, k: int, image_ids: set, category_ids: set, category: int) -> list[str]:
    """Check one annotation in place and fill what can be derived; returns what was filled (for the notes)."""
    filled = []
    image_id = ann.get("image_id", _MISSING)
    if not is_id(image_id) or image_id not in image_ids:
        raise CocoFormatError(f"{where}: image_id {show(image_id)} is not in 'images'")
    if "category_id" not in ann:
        ann["category_id"] = category
        filled.append("category_id")
    elif not is_id(ann["category_id"]) or ann["category_id"] not in category_ids:
        raise CocoFormatError(
            f"{where}: category_id {show(ann['category_id'])} is not the id of an entry of 'categories'"
        )
    if ann["category_id"] != category:
        return filled  # another category: evaluation leaves it alone
    fix = "fix or drop the annotation"
    values = _keypoint_values(ann.get("keypoints"), where, k)
    ann["keypoints"] = values
    bbox = ann.get("bbox")
    if not isinstance(bbox, list) or len(bbox) != 4:
        raise CocoFormatError(f"{where}: 'bbox' must be [x, y, w, h]")
    box = [finite_number(v, where, f"bbox[{i}]", fix) for i, v in enumerate(bbox)]
    if box[2] < 0 or box[3] < 0:
        raise CocoFormatError(f"{where}: bbox {show(bbox)} has a negative width or height; it is [x, y, w, h]")
    ann["bbox"] = box
    if "area" not in ann:
        ann["area"] = box[2] * box[3]
        filled.append("area")
    else:
        ann["area"] = finite_number(ann["area"], where, "area", fix)
        if ann["area"] < 0:
            raise CocoFormatError(f"{where}: area {show(ann['area'])} is negative")
    crowd = ann.get("iscrowd", 0)
    if isinstance(crowd, bool):
        ann["iscrowd"] = int(crowd)
        filled.append("iscrowd")
    elif isinstance(crowd, int) and crowd in (0, 1):
        ann["iscrowd"] = crowd
    else:
        raise CocoFormatError(
            f"{where}: iscrowd is {show(crowd)}; it must be 0 or 1 (or false/true): pycocotools reads any other "
            'non-empty value, the string "0" too, as a crowd'
        )
    labelled = sum(1 for v in values[2::3] if v > 0)
    if "num_keypoints" not in ann:
        ann["num_keypoints"] = labelled
        filled.append("num_keypoints")
    elif not is_id(ann["num_keypoints"]) or ann["num_keypoints"] != labelled:
        raise CocoFormatError(
            f"{where}: num_keypoints is {show(ann['num_keypoints'])} but {labelled} keypoints have v > 0: fix it "
            "or drop the key (it is then counted)"
        )
    if labelled and not ann["iscrowd"] and ann["area"] <= 0:
        raise CocoFormatError(
            f"{where}: area 0 with {labelled} labelled keypoints; OKS divides by the area: give the person's area "
            "(or drop 'area' and give a bbox, from which it is derived)"
        )
    return filled


FILLED_NOTES = {
    "area": "had no 'area': derived it from the box (w*h), which raises OKS",
    "iscrowd": "had a boolean 'iscrowd': read as 0/1",
    "num_keypoints": "had no 'num_keypoints': counted the keypoints with v > 0",
    "category_id": "had no 'category_id': read as the keypoint category's",
    "id": "had no 'id': numbered them after the largest id",
}


def load_coco_ground_truth(
    source: str | Path | dict, sigmas=None, keypoint_set: KeypointSet | None = None
) -> CocoGroundTruth:
    """Read, check and normalise a COCO-format person-keypoint file (path or already-parsed dict).

    The keypoint set is the file's own category (`sigmas` for a file without its own and non-COCO names).
    A `keypoint_set` recorded elsewhere (a shard manifest, a model card) must name the same keypoints; its
    sigmas are used. Malformed content raises a CocoFormatError (NonFiniteError for NaN/inf) naming the entry.
    """
    name = "<dict>" if isinstance(source, dict) else str(source)
    data = copy.deepcopy(source) if isinstance(source, dict) else read_json(source, "a COCO keypoint annotation file")
    if not isinstance(data, dict):
        raise CocoFormatError(f"{name}: expected a JSON object with images/annotations/categories")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise CocoFormatError(
                f"{name}: missing list '{key}'; a COCO keypoint file needs images, annotations, categories"
            )
    category_ids = _unique_ids(data["categories"], name, "categories", "category")
    categories = [c for c in data["categories"] if c.get("keypoints")]
    if not categories:
        raise CocoFormatError(f"{name}: no category lists 'keypoints' names; is this a keypoint annotation file?")
    index = data["categories"].index(categories[0])
    kset = from_coco_category(categories[0], sigmas, where=f"{name}: categories[{index}]")
    if keypoint_set is not None:
        if keypoint_set.names != kset.names:
            raise CocoFormatError(
                f"{name}: its keypoints ({', '.join(kset.names)}) are not the keypoint set "
                f"{keypoint_set.name!r} ({', '.join(keypoint_set.names)}) of the predictions"
            )
        kset = keypoint_set
    image_ids = _unique_ids(data["images"], name, "images", "image")
    next_id = _annotation_ids(data["annotations"], name)
    filled: dict[str, int] = defaultdict(int)
    for index, ann in enumerate(data["annotations"]):
        if "id" not in ann:
            ann["id"] = next_id
            next_id += 1
            filled["id"] += 1
        where = f"{name}: annotation #{index} (id {ann['id']})"
        for what in _normalise_annotation(ann, where, kset.num_keypoints, image_ids, category_ids, categories[0]["id"]):
            filled[what] += 1
    notes = [f"{filled[what]} annotations {text}" for what, text in FILLED_NOTES.items() if filled[what]]
    data.setdefault("info", {})
    data.setdefault("licenses", [])
    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return CocoGroundTruth(coco=coco, keypoint_set=kset, source=name, notes=notes)


def check_result(
    res,
    index: int,
    name: str,
    num_keypoints: int,
    category_id: int | None = None,
    ground_truth: str = "the ground truth",
) -> dict:
    """One results entry checked and normalised (float keypoints and score); a malformed entry raises a
    CocoFormatError, a NaN/inf number a NonFiniteError, each naming the entry and what to fix."""
    if not isinstance(res, dict):
        raise CocoFormatError(f"{name}: entry #{index} is {type(res).__name__}, {RESULTS_HINT}")
    missing = [key for key in ("image_id", "category_id", "keypoints", "score") if key not in res]
    if missing:
        raise CocoFormatError(f"{name}: entry #{index} lacks {missing}; {RESULTS_HINT}")
    image_id = res["image_id"]
    where = f"{name}: entry #{index}" + (f" (image_id {image_id})" if is_id(image_id) else "")
    fix = "fix or drop the entry"
    for key in ("image_id", "category_id"):
        if not is_id(res[key]):
            raise CocoFormatError(f"{where}: {key} is {show(res[key])}; it must be an integer id (below 2^63)")
    if category_id is not None and res["category_id"] != category_id:
        raise CocoFormatError(
            f"{where}: category_id {res['category_id']} is not the keypoint category of {ground_truth} "
            f"({category_id}), so it would match no person and score AP 0: write category_id {category_id}"
        )
    kpts = res["keypoints"]
    if not isinstance(kpts, list) or len(kpts) != 3 * num_keypoints:
        got = len(kpts) if isinstance(kpts, list) else type(kpts).__name__
        raise CocoFormatError(
            f"{name}: entry #{index} has keypoints of length {got}, expected {3 * num_keypoints} "
            f"({num_keypoints} keypoints x (x, y, score))"
        )
    values = [
        finite_number(v, where, f"keypoints[{i}] (keypoint {i // 3} {('x', 'y', 'score')[i % 3]})", fix)
        for i, v in enumerate(kpts)
    ]
    score = finite_number(res["score"], where, "score", fix)
    return {**res, "keypoints": values, "score": score}


def load_coco_results(source: str | Path | list, num_keypoints: int, category_id: int | None = None) -> list[dict]:
    """Read and check a COCO keypoint results file: a list of {image_id, category_id, keypoints, score}.

    Every number must be finite (a NaN OKS counts as a match in pycocotools); with `category_id` (the ground
    truth's keypoint category) every entry must name it. Returns the entries with float keypoints and scores.
    """
    name = "<list>" if isinstance(source, list) else str(source)
    results = source if isinstance(source, list) else read_json(source, "a COCO keypoint results file")
    if not isinstance(results, list):
        raise CocoFormatError(f"{name}: top level is {type(results).__name__}, {RESULTS_HINT}")
    return [check_result(res, index, name, num_keypoints, category_id) for index, res in enumerate(results)]


def evaluate_coco(gt: CocoGroundTruth, results: list[dict], source: str = "results") -> tuple[dict[str, float], str]:
    """OKS AP of results against gt. Returns (metrics named as COCO_METRIC_NAMES, pycocotools' summary text).

    The results are checked first (`check_result`; `source` names them in errors): finite numbers, the ground
    truth's keypoint category, its image ids.
    """
    sigmas = gt.keypoint_set.sigmas
    if sigmas is None:
        raise CocoFormatError(
            f"{gt.source}: OKS needs per-keypoint sigmas and '{gt.keypoint_set.name}' has "
            f"{gt.keypoint_set.num_keypoints} keypoints that are not COCO's: pass sigmas (one per keypoint)"
        )
    if not isinstance(results, list):
        raise CocoFormatError(f"{source}: results are {type(results).__name__}, {RESULTS_HINT}")
    k = gt.keypoint_set.num_keypoints
    results = [check_result(r, i, source, k, gt.category_id, gt.source) for i, r in enumerate(results)]
    unknown = sorted({r["image_id"] for r in results} - set(gt.coco.getImgIds()))
    if unknown:
        raise CocoFormatError(f"{source}: results name image ids that are not in {gt.source}: {unknown[:10]}")
    if not results:
        return {key: 0.0 for key in COCO_METRIC_NAMES}, "no predictions: every metric is 0"
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        with np.errstate(over="ignore"):  # far-off keypoints: their box area and d^2 overflow to inf, OKS 0
            dets = gt.coco.loadRes(results)
            evaluator = COCOeval(gt.coco, dets, "keypoints")
            evaluator.params.kpt_oks_sigmas = np.asarray(sigmas, dtype=np.float64)
            evaluator.params.catIds = [gt.category_id]
            evaluator.params.useSegm = None
            evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    if not all(math.isfinite(v) for v in evaluator.stats):
        raise NonFiniteError(f"{source} against {gt.source}: pycocotools gave non-finite metrics {evaluator.stats}")
    stats = [min(max(float(v), 0.0), 1.0) for v in evaluator.stats]  # -1 (no ground truth in a range) reads as 0
    return dict(zip(COCO_METRIC_NAMES, stats)), out.getvalue()


def rescore(maxvals: np.ndarray, box_scores, in_vis_thre: float = 0.2) -> np.ndarray:
    """The reference's instance score: box score x mean of the keypoint maxvals above in_vis_thre (0 if none)."""
    maxvals = np.asarray(maxvals, dtype=np.float64)
    above = maxvals > in_vis_thre
    counts = above.sum(axis=1)
    kpt_score = np.where(counts > 0, (maxvals * above).sum(axis=1) / np.maximum(counts, 1), 0.0)
    return kpt_score * np.asarray(box_scores, dtype=np.float64)


def nms_per_image(poses: np.ndarray, scores: np.ndarray, areas, image_ids, sigmas, oks_thre: float = 0.9) -> list[int]:
    """Indices kept by hard OKS-NMS within each image (best first per image); all of an image if NMS keeps none.

    poses [N, K, 3] (x, y, maxval); sigmas None skips NMS (keypoints without OKS sigmas, e.g. MPII).
    """
    by_image: dict[int, list[int]] = defaultdict(list)
    for i, image_id in enumerate(image_ids):
        by_image[int(image_id)].append(i)
    kept: list[int] = []
    for idx in by_image.values():
        idx = np.asarray(idx)
        keep = oks_nms(poses[idx], scores[idx], np.asarray(areas)[idx], oks_thre, sigmas) if sigmas is not None else []
        kept += [int(j) for j in (idx[keep] if keep else idx)]
    return kept


def coco_result(image_id: int, pose: np.ndarray, score: float, category_id: int = 1) -> dict:
    """One COCO keypoint result from a pose [K, 3] (x, y, maxval)."""
    return {
        "image_id": int(image_id),
        "category_id": int(category_id),
        "keypoints": [round(float(v), 3) for v in np.asarray(pose).reshape(-1)],
        "score": float(score),
    }


def rescore_and_nms(
    keypoints: np.ndarray,
    maxvals: np.ndarray,
    box_scores: np.ndarray,
    areas: np.ndarray,
    image_ids,
    sigmas,
    category_id: int = 1,
    in_vis_thre: float = 0.2,
    oks_thre: float = 0.9,
) -> list[dict]:
    """Reference post-processing of top-down predictions into COCO results.

    keypoints [N, K, 2] image coordinates, maxvals [N, K], box_scores [N], areas [N] (= (scale*200)
    product), image_ids [N]. Score = box score x mean of maxvals > in_vis_thre (0 if none); then per image
    hard OKS-NMS over all joints; if NMS would keep nothing, all are kept.
    """
    keypoints = np.asarray(keypoints, dtype=np.float64)
    maxvals = np.asarray(maxvals, dtype=np.float64)
    scores = rescore(maxvals, box_scores, in_vis_thre)
    poses = np.concatenate([keypoints, maxvals[..., None]], axis=2)
    kept = nms_per_image(poses, scores, areas, image_ids, sigmas, oks_thre)
    return [coco_result(image_ids[j], poses[j], scores[j], category_id) for j in kept]


def ground_truth_as_results(gt: CocoGroundTruth) -> list[dict]:
    """Every non-crowd annotation with keypoints as a perfect prediction (score 1): the AP = 1 oracle."""
    results = []
    category = gt.category_id
    for ann in gt.coco.dataset["annotations"]:
        if ann["category_id"] != category or ann.get("iscrowd") or ann.get("num_keypoints", 0) == 0:
            continue
        kpts = np.asarray(ann["keypoints"], dtype=np.float64).reshape(-1, 3)
        kpts[:, 2] = 1.0
        results.append(
            {
                "image_id": ann["image_id"],
                "category_id": ann["category_id"],
                "keypoints": kpts.reshape(-1).tolist(),
                "score": 1.0,
            }
        )
    return results


def format_coco_table(metrics: dict[str, float]) -> str:
    """A one-row markdown table of the headline COCO metrics."""
    keys = COCO_METRIC_NAMES[:6]
    return (
        "| "
        + " | ".join(keys)
        + " |\n|"
        + "---|" * len(keys)
        + "\n| "
        + " | ".join(f"{metrics[k]:.3f}" for k in keys)
        + " |"
    )
