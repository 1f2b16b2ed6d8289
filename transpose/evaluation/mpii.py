"""MPII PCKh, as the reference (HRNet's MPIIDataset.evaluate) computes it.

Inputs are 0-based predictions [N, 16, 2] in the order of the ground truth file; the official
`gt_valid.mat` holds 1-based `pos_gt_src` [16, 2, N], `jnt_missing` [16, N], `headboxes_src` [2, 2, N].
The head size is the head-box diagonal x 0.6. The mean over joints is weighted by the number of visible
joints of each type, with pelvis and thorax left out.

About "Mean@0.1": the reference reports the PCKh at index 11 of arange(0, 0.51, 0.01), i.e. at threshold
0.11, under that name. We report both: `PCKh_0.1` at 0.1, and `PCKh_0.11` (the reference's "Mean@0.1").
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.io import loadmat, savemat

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


def load_mpii_ground_truth(path: str | Path) -> MpiiGroundTruth:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"MPII ground truth {path} does not exist (expected annot/gt_valid.mat)")
    mat = loadmat(str(path))
    missing = [k for k in ("pos_gt_src", "jnt_missing", "headboxes_src") if k not in mat]
    if missing:
        raise ValueError(f"{path} lacks {missing}; expected the layout of the official gt_valid.mat")
    gt = MpiiGroundTruth(mat["pos_gt_src"], mat["jnt_missing"], mat["headboxes_src"], str(path))
    if gt.pos_gt_src.shape[:2] != (16, 2) or gt.jnt_missing.shape != (16, gt.num_people):
        raise ValueError(
            f"{path}: pos_gt_src {gt.pos_gt_src.shape} and jnt_missing {gt.jnt_missing.shape} "
            "are not [16, 2, N] and [16, N]"
        )
    return gt


def pckh_curve(preds: np.ndarray, gt: MpiiGroundTruth, thresholds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """PCKh per joint [len(thresholds), 16] in percent, and the visible-joint counts [16]."""
    preds = np.asarray(preds, dtype=np.float64)
    if preds.shape != (gt.num_people, 16, 2):
        raise ValueError(
            f"predictions have shape {preds.shape}, expected ({gt.num_people}, 16, 2) to match {gt.source}"
        )
    pos_pred_src = np.transpose(preds + 1.0, [1, 2, 0])  # 0-based -> 1-based, [16, 2, N]
    visible = 1 - gt.jnt_missing
    uv_err = np.linalg.norm(pos_pred_src - gt.pos_gt_src, axis=1)  # [16, N]
    head_sizes = np.linalg.norm(gt.headboxes_src[1] - gt.headboxes_src[0], axis=0) * SC_BIAS  # [N]
    scaled = uv_err / head_sizes[None, :] * visible
    counts = visible.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        curve = np.stack([100.0 * ((scaled <= t) * visible).sum(axis=1) / counts for t in thresholds])
    return curve, counts


def evaluate_mpii(preds: np.ndarray, gt: MpiiGroundTruth) -> dict[str, float]:
    """PCKh per body part at 0.5, and the visible-count-weighted means at 0.5, 0.1 and 0.11."""
    thresholds = np.concatenate([[0.5], np.arange(0, 0.51, 0.01)])
    curve, counts = pckh_curve(preds, gt, thresholds)
    pckh, at = curve[0], curve[1:]
    weights = counts.astype(np.float64).copy()
    weights[6:8] = 0  # pelvis and thorax are not in the mean
    weights /= weights.sum()

    def mean(row: np.ndarray) -> float:
        return float(np.nansum(row * weights))

    metrics = {part: float(np.mean(pckh[list(j)])) for part, j in PART_JOINTS.items()}
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
