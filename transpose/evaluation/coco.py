"""COCO keypoint evaluation (OKS AP with pycocotools) for any COCO-format keypoint file.

Ground truth is normalised before evaluation, and every change is reported: a missing `area` is derived
from the box (w*h), a boolean `iscrowd` becomes 0/1, a missing `num_keypoints` is counted from the
visibilities. Predictions go through the reference's rescoring (box score x mean of keypoint maxvals
above 0.2) and hard OKS-NMS at 0.9 before being written in the standard COCO results format:
[{"image_id", "category_id", "keypoints": [x1, y1, s1, ...], "score"}].
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from transpose.evaluation.oks import oks_nms
from transpose.keypoints import KeypointSet, from_coco_category

COCO_METRIC_NAMES = ("AP", "AP50", "AP75", "APm", "APl", "AR", "AR50", "AR75", "ARm", "ARl")


class CocoFormatError(ValueError):
    """A ground-truth or results file is not in the COCO keypoint format."""


@dataclass
class CocoGroundTruth:
    """A pycocotools COCO index over a normalised keypoint file, with what normalisation changed."""

    coco: COCO
    keypoint_set: KeypointSet
    source: str
    notes: list[str] = field(default_factory=list)

    @property
    def category_id(self) -> int:
        return int(self.coco.dataset["categories"][0]["id"])


def _load_json(path: str | Path, what: str):
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} file {path} does not exist")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise CocoFormatError(f"{path} is not valid JSON ({err}); expected a COCO {what} file") from err


def load_coco_ground_truth(
    source: str | Path | dict, sigmas=None, keypoint_set: KeypointSet | None = None
) -> CocoGroundTruth:
    """Read and normalise a COCO-format person-keypoint file (path or already-parsed dict).

    The keypoint set is the file's own category (`sigmas` for a file without its own and non-COCO names).
    A `keypoint_set` recorded elsewhere (a shard manifest, a model card) must name the same keypoints; its
    sigmas are used.
    """
    name = "<dict>" if isinstance(source, dict) else str(source)
    data = copy.deepcopy(source) if isinstance(source, dict) else _load_json(source, "annotation")
    if not isinstance(data, dict):
        raise CocoFormatError(f"{name}: expected a JSON object with images/annotations/categories")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise CocoFormatError(
                f"{name}: missing list '{key}'; a COCO keypoint file needs images, annotations, categories"
            )
    categories = [c for c in data["categories"] if c.get("keypoints")]
    if not categories:
        raise CocoFormatError(f"{name}: no category lists 'keypoints' names; is this a keypoint annotation file?")
    kset = from_coco_category(categories[0], sigmas, where=f"{name}: categories[0]")
    if keypoint_set is not None:
        if keypoint_set.names != kset.names:
            raise CocoFormatError(
                f"{name}: its keypoints ({', '.join(kset.names)}) are not the keypoint set "
                f"{keypoint_set.name!r} ({', '.join(keypoint_set.names)}) of the predictions"
            )
        kset = keypoint_set
    k = kset.num_keypoints
    image_ids = {img.get("id") for img in data["images"]}
    notes: list[str] = []
    derived_area = bool_crowd = counted = 0
    for index, ann in enumerate(data["annotations"]):
        where = f"{name}: annotation #{index} (id {ann.get('id')})"
        kpts = ann.get("keypoints")
        if not isinstance(kpts, list) or len(kpts) != 3 * k:
            raise CocoFormatError(f"{where}: 'keypoints' must be a list of {3 * k} numbers (x, y, v) x {k}")
        if ann.get("image_id") not in image_ids:
            raise CocoFormatError(f"{where}: image_id {ann.get('image_id')} is not in 'images'")
        bbox = ann.get("bbox")
        if not isinstance(bbox, list) or len(bbox) != 4:
            raise CocoFormatError(f"{where}: 'bbox' must be [x, y, w, h]")
        if "area" not in ann:
            ann["area"] = float(bbox[2]) * float(bbox[3])
            derived_area += 1
        if isinstance(ann.get("iscrowd"), bool):
            ann["iscrowd"] = int(ann["iscrowd"])
            bool_crowd += 1
        ann.setdefault("iscrowd", 0)
        if "num_keypoints" not in ann:
            ann["num_keypoints"] = int(sum(1 for v in kpts[2::3] if v > 0))
            counted += 1
        ann.setdefault("category_id", categories[0]["id"])
    if derived_area:
        notes.append(f"{derived_area} annotations had no 'area': derived it from the box (w*h), which raises OKS")
    if bool_crowd:
        notes.append(f"{bool_crowd} annotations had a boolean 'iscrowd': read as 0/1")
    if counted:
        notes.append(f"{counted} annotations had no 'num_keypoints': counted the keypoints with v > 0")
    data.setdefault("info", {})
    data.setdefault("licenses", [])
    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return CocoGroundTruth(coco=coco, keypoint_set=kset, source=name, notes=notes)


def load_coco_results(source: str | Path | list, num_keypoints: int) -> list[dict]:
    """Read and check a COCO keypoint results file: a list of {image_id, category_id, keypoints, score}."""
    name = "<list>" if isinstance(source, list) else str(source)
    results = source if isinstance(source, list) else _load_json(source, "results")
    hint = 'expected a JSON list of {"image_id", "category_id", "keypoints": [x, y, score, ...], "score"}'
    if not isinstance(results, list):
        raise CocoFormatError(f"{name}: top level is {type(results).__name__}, {hint}")
    for index, res in enumerate(results):
        if not isinstance(res, dict):
            raise CocoFormatError(f"{name}: entry #{index} is {type(res).__name__}, {hint}")
        missing = [key for key in ("image_id", "category_id", "keypoints", "score") if key not in res]
        if missing:
            raise CocoFormatError(f"{name}: entry #{index} lacks {missing}; {hint}")
        kpts = res["keypoints"]
        if not isinstance(kpts, list) or len(kpts) != 3 * num_keypoints:
            got = len(kpts) if isinstance(kpts, list) else type(kpts).__name__
            raise CocoFormatError(
                f"{name}: entry #{index} has keypoints of length {got}, expected {3 * num_keypoints} "
                f"({num_keypoints} keypoints x (x, y, score))"
            )
        if not all(isinstance(v, (int, float)) for v in kpts) or not isinstance(res["score"], (int, float)):
            raise CocoFormatError(f"{name}: entry #{index} has non-numeric keypoints or score")
    return results


def evaluate_coco(gt: CocoGroundTruth, results: list[dict]) -> tuple[dict[str, float], str]:
    """OKS AP of results against gt. Returns (metrics named as COCO_METRIC_NAMES, pycocotools' summary text)."""
    sigmas = gt.keypoint_set.sigmas
    if sigmas is None:
        raise CocoFormatError(
            f"{gt.source}: OKS needs per-keypoint sigmas and '{gt.keypoint_set.name}' has "
            f"{gt.keypoint_set.num_keypoints} keypoints that are not COCO's: pass sigmas (one per keypoint)"
        )
    unknown = sorted({r["image_id"] for r in results} - set(gt.coco.getImgIds()))
    if unknown:
        raise CocoFormatError(f"results name image ids that are not in {gt.source}: {unknown[:10]}")
    if not results:
        return {key: 0.0 for key in COCO_METRIC_NAMES}, "no predictions: every metric is 0"
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        dets = gt.coco.loadRes(copy.deepcopy(results))
        evaluator = COCOeval(gt.coco, dets, "keypoints")
        evaluator.params.kpt_oks_sigmas = np.asarray(sigmas, dtype=np.float64)
        evaluator.params.useSegm = None
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    stats = [max(float(v), 0.0) for v in evaluator.stats]  # -1 (no ground truth in a range) reads as 0
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
    for ann in gt.coco.dataset["annotations"]:
        if ann.get("iscrowd") or ann.get("num_keypoints", 0) == 0:
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
