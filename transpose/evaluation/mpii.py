"""MPII PCKh, as the reference (HRNet's MPIIDataset.evaluate) computes it.

Inputs are 0-based predictions [N, 16, 2] in the order of the ground truth file; the official
`gt_valid.mat` holds 1-based `pos_gt_src` [16, 2, N], `jnt_missing` [16, N], `headboxes_src` [2, 2, N].
The head size is the head-box diagonal x 0.6. The mean over joints is weighted by the number of visible
joints of each type, with pelvis and thorax left out.

About "Mean@0.1": the reference reports the PCKh at index 11 of arange(0, 0.51, 0.01), i.e. at threshold
0.11, under that name. We report both: `PCKh_0.1` at 0.1, and `PCKh_0.11` (the reference's "Mean@0.1").

A ground truth that cannot give a sound number (not a .mat file, arrays of other shapes or counts, no people,
a missing flag other than 0/1, a NaN joint, a zero-size or NaN head box, a body part no one has visible) is an
MpiiFormatError naming the file; NaN/inf predictions are a NonFiniteError naming the person and the joint.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.io import loadmat, savemat

from transpose.evaluation.oks import NonFiniteError, first_non_finite, non_finite_name
from transpose.keypoints import MPII

SC_BIAS = 0.6
# MPII joint order: 0 r_ankle 1 r_knee 2 r_hip 3 l_hip 4 l_knee 5 l_ankle 6 pelvis 7 thorax 8 upper_neck
# 9 head_top 10 r_wrist 11 r_elbow 12 r_shoulder 13 l_shoulder 14 l_elbow 15 l_wrist
PART_JOINTS = {
    "Head": (9,),
    "Shoulder": (13, 12),
    "Elbow": (14, 11),
    "Wrist": (15, 10),
    "Hip": (3, 2),
    "Knee": (4, 1),
    "Ankle": (5, 0),
}
MPII_METRIC_NAMES = (*PART_JOINTS, "PCKh", "PCKh_0.1", "PCKh_0.11")
GT_ARRAYS = ("pos_gt_src", "jnt_missing", "headboxes_src")


class MpiiFormatError(ValueError):
    """An MPII file (the HRNet/MMPose json, gt_valid.mat, predictions) that cannot be read or scored soundly."""


def read_mat(path: str | Path, what: str) -> dict:
    """The variables of a MATLAB .mat file; anything scipy cannot read is an MpiiFormatError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; expected {what}")
    try:
        return loadmat(str(path))
    except Exception as err:  # scipy raises ValueError, TypeError, OSError, zlib/struct errors... on a broken file
        raise MpiiFormatError(
            f"{path} is not a readable MATLAB .mat file ({type(err).__name__}: {err}); expected {what} (MATLAB v5)"
        ) from None


def numeric_array(value, where: str) -> np.ndarray:
    """`value` as a float64 array; strings, cells, structs and complex numbers are an MpiiFormatError."""
    array = np.asarray(value)
    if array.dtype == bool or np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating):
        return array.astype(np.float64)
    raise MpiiFormatError(f"{where} holds {array.dtype} values, not real numbers")


@dataclass
class MpiiGroundTruth:
    pos_gt_src: np.ndarray  # [16, 2, N], 1-based
    jnt_missing: np.ndarray  # [16, N]
    headboxes_src: np.ndarray  # [2, 2, N]
    source: str = "<arrays>"

    @property
    def num_people(self) -> int:
        return self.pos_gt_src.shape[2]

    def save_mat(self, path: str | Path) -> None:
        """Write in the layout of the official gt_valid.mat."""
        names = np.array(
            [["rank", "rkne", "rhip", "lhip", "lkne", "lank", "pelv", "thrx", "neck", "head", "rwri", "relb",
              "rsho", "lsho", "lelb", "lwri"]],
            dtype=object,
        )  # fmt: skip
        savemat(
            str(path),
            {
                "dataset_joints": names,
                "jnt_missing": self.jnt_missing,
                "pos_gt_src": self.pos_gt_src,
                "headboxes_src": self.headboxes_src,
            },
        )

    def check(self) -> MpiiGroundTruth:
        """Real-number arrays of matching shapes [16, 2, N], [16, N], [2, 2, N] with N > 0, missing flags 0/1,
        finite visible joints, and a finite head box of non-zero size for everyone with a visible joint."""
        for key in GT_ARRAYS:
            setattr(self, key, numeric_array(getattr(self, key), f"{self.source}: {key}"))
        pos, missing, boxes = self.pos_gt_src, self.jnt_missing, self.headboxes_src
        n = pos.shape[2] if pos.ndim == 3 else -1
        if pos.shape[:2] != (16, 2) or pos.ndim != 3 or missing.shape != (16, n) or boxes.shape != (2, 2, n):
            raise MpiiFormatError(
                f"{self.source}: pos_gt_src {pos.shape}, jnt_missing {missing.shape} and headboxes_src {boxes.shape} "
                "are not [16, 2, N], [16, N] and [2, 2, N] for the same N people"
            )
        if n == 0:
            raise MpiiFormatError(f"{self.source}: holds no people (N = 0); PCKh needs at least one")
        bad = np.argwhere((missing != 0) & (missing != 1))
        if len(bad):
            j, i = bad[0]
            raise MpiiFormatError(
                f"{self.source}: jnt_missing of person {i} joint {j} is {missing[j, i]}; it must be 0 (visible) or 1"
            )
        visible = missing == 0
        bad = np.argwhere(visible[:, None, :].repeat(2, axis=1) & ~np.isfinite(pos))
        if len(bad):
            j, c, i = bad[0]
            raise NonFiniteError(
                f"{self.source}: pos_gt_src of person {i} joint {j} ({MPII.names[j]}) {'xy'[c]} is "
                f"{non_finite_name(pos[j, c, i])} but the joint is not missing: fix it or set its jnt_missing to 1"
            )
        with np.errstate(invalid="ignore", over="ignore"):
            head = np.linalg.norm(boxes[1] - boxes[0], axis=0)
        bad = np.flatnonzero(visible.any(axis=0) & ~(np.isfinite(head) & (head > 0)))
        if len(bad):
            i = bad[0]
            raise MpiiFormatError(
                f"{self.source}: the head box of person {i} {boxes[:, :, i].tolist()} has size {head[i]}; PCKh divides "
                "by it (every visible joint of that person would count as a miss): fix the box"
            )
        return self


def load_mpii_ground_truth(path: str | Path) -> MpiiGroundTruth:
    """The official gt_valid.mat layout, checked (`MpiiGroundTruth.check`); errors name the file."""
    path = Path(path)
    mat = read_mat(path, "the MPII ground truth (annot/gt_valid.mat)")
    missing = [k for k in GT_ARRAYS if k not in mat]
    if missing:
        raise MpiiFormatError(f"{path} lacks {missing}; expected the layout of the official gt_valid.mat")
    return MpiiGroundTruth(mat["pos_gt_src"], mat["jnt_missing"], mat["headboxes_src"], str(path)).check()


def check_predictions(preds, gt: MpiiGroundTruth, source: str = "predictions") -> np.ndarray:
    """0-based joints [N, 16, 2] matching the ground truth's N, all finite; else an error naming the person."""
    try:
        preds = np.asarray(preds, dtype=np.float64)
    except (TypeError, ValueError, OverflowError) as err:
        raise MpiiFormatError(f"{source}: not an array of numbers ({err})") from None
    if preds.shape != (gt.num_people, 16, 2):
        raise MpiiFormatError(f"{source}: shape {preds.shape}, expected ({gt.num_people}, 16, 2) to match {gt.source}")
    bad = first_non_finite(preds)
    if bad is not None:
        i, j, c = bad
        raise NonFiniteError(
            f"{source}: person {i} joint {j} ({MPII.names[j]}) {'xy'[c]} is {non_finite_name(preds[bad])}; "
            "predictions must be finite (a non-finite heatmap decodes to NaN): check the model's output"
        )
    return preds


def pckh_curve(preds: np.ndarray, gt: MpiiGroundTruth, thresholds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """PCKh per joint [len(thresholds), 16] in percent (NaN for a joint no one has visible), and the visible-joint
    counts [16]."""
    gt = gt.check()
    preds = check_predictions(preds, gt)
    pos_pred_src = np.transpose(preds + 1.0, [1, 2, 0])  # 0-based -> 1-based, [16, 2, N]
    visible = 1 - gt.jnt_missing
    with np.errstate(invalid="ignore", over="ignore"):  # far-off predictions: an inf error, a miss
        uv_err = np.linalg.norm(pos_pred_src - np.where(visible[:, None] > 0, gt.pos_gt_src, 0.0), axis=1)  # [16, N]
        head_sizes = np.linalg.norm(gt.headboxes_src[1] - gt.headboxes_src[0], axis=0) * SC_BIAS  # [N]
        head_sizes = np.where(np.isfinite(head_sizes) & (head_sizes > 0), head_sizes, 1.0)  # no visible joint
        scaled = np.where(visible > 0, uv_err / head_sizes[None, :], 0.0)
    counts = visible.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        curve = np.stack([100.0 * ((scaled <= t) * visible).sum(axis=1) / counts for t in thresholds])
    return curve, counts


def evaluate_mpii(preds: np.ndarray, gt: MpiiGroundTruth) -> dict[str, float]:
    """PCKh per body part at 0.5, and the visible-count-weighted means at 0.5, 0.1 and 0.11.

    A part is the mean of its joints that someone has visible; a part no one has visible is an error (its PCKh is
    undefined), as is a ground truth with no visible joint outside pelvis and thorax.
    """
    thresholds = np.concatenate([[0.5], np.arange(0, 0.51, 0.01)])
    curve, counts = pckh_curve(preds, gt, thresholds)
    pckh, at = curve[0], curve[1:]
    weights = counts.astype(np.float64).copy()
    weights[6:8] = 0  # pelvis and thorax are not in the mean
    if weights.sum() <= 0:
        raise MpiiFormatError(f"{gt.source}: no joint outside pelvis and thorax is visible; PCKh is undefined")
    weights /= weights.sum()

    def mean(row: np.ndarray) -> float:
        return float(np.nansum(row * weights))

    metrics = {}
    for part, joints in PART_JOINTS.items():
        seen = [j for j in joints if counts[j] > 0]
        if not seen:
            names = " and ".join(MPII.names[j] for j in joints)
            raise MpiiFormatError(
                f"{gt.source}: no person has a visible {names}, so the {part} PCKh is undefined; evaluate on a set "
                "where every body part is labelled at least once"
            )
        metrics[part] = float(np.mean(pckh[seen]))
    metrics["PCKh"] = mean(pckh)
    metrics["PCKh_0.1"] = mean(at[10])
    metrics["PCKh_0.11"] = mean(at[11])
    return metrics


def format_mpii_table(metrics: dict[str, float]) -> str:
    header = [*PART_JOINTS, "Mean@0.5", "Mean@0.1", "Mean@0.1 (ref: 0.11)"]
    values = [metrics[p] for p in PART_JOINTS] + [metrics["PCKh"], metrics["PCKh_0.1"], metrics["PCKh_0.11"]]
    return (
        "| "
        + " | ".join(header)
        + " |\n|"
        + "---|" * len(header)
        + "\n| "
        + " | ".join(f"{v:.2f}" for v in values)
        + " |"
    )
