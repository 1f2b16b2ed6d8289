"""MPII in the HRNet/MMPose json layout as PersonRecords.

Each entry: {"image", "joints" [[x, y] x 16] (1-based, MATLAB), "joints_vis" [16], "center" [x, y], "scale" s}.
As the reference: center y += 15 * s and s *= 1.25 (when the center is given), then 1-based -> 0-based for the
center and the joints. The scale is square [s, s], with no aspect widening.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dataops.datasets.coco import numbers
from dataops.datasets.records import PersonRecord, SkipReport
from transpose.evaluation.json_input import read_json, show
from transpose.evaluation.mpii import MpiiFormatError
from transpose.keypoints import MPII

ENTRY_HINT = "needs image (a file name), center [x, y], scale, 16 joints [x, y], 16 joints_vis (0 or 1)"


def _entry_problem(entry, k: int) -> str | None:
    """Why an MPII json entry is malformed (wrong keys, types or sizes; joints_vis not 0/1), None if it is not."""
    if not isinstance(entry, dict):
        return f"is {show(entry)}, not an object"
    if not isinstance(entry.get("image"), str) or not entry["image"]:
        return f"image {show(entry.get('image'))} is not a file name"
    if numbers([entry.get("scale")], 1) is None or numbers(entry.get("center"), 2) is None:
        return f"center {show(entry.get('center'))} and scale {show(entry.get('scale'))} must be numbers"
    joints = entry.get("joints")
    if not isinstance(joints, list) or len(joints) != k or any(numbers(j, 2) is None for j in joints):
        return f"joints must be {k} [x, y] pairs of finite numbers"
    vis = entry.get("joints_vis")
    if not isinstance(vis, list) or len(vis) != k or not all(isinstance(v, (int, float)) and v in (0, 1) for v in vis):
        return f"joints_vis {show(vis)} must be {k} flags 0 or 1"
    return None


def read_mpii(
    ann_file: str | Path, image_dir: str | Path, key_prefix: str = "m"
) -> tuple[list[PersonRecord], SkipReport]:
    """The entries of an HRNet/MMPose MPII json as PersonRecords (annotation id = index in the file). A file that
    is not such a JSON list is an MpiiFormatError naming it; an entry that cannot be used is skipped and counted:
    malformed annotation (see ENTRY_HINT; NaN/inf included), degenerate box (scale <= 0), no labelled keypoints."""
    ann_file, image_dir = Path(ann_file), Path(image_dir)
    entries = read_json(ann_file, "the HRNet/MMPose MPII json list", MpiiFormatError)
    if not isinstance(entries, list):
        raise MpiiFormatError(f"{ann_file}: expected a JSON list of {{image, joints, joints_vis, center, scale}}")
    report = SkipReport()
    records = []
    k = MPII.num_keypoints
    for index, entry in enumerate(entries):
        where = f"{ann_file}: [{index}]"
        problem = _entry_problem(entry, k)
        if problem is not None:
            report.add("malformed annotation", f"{where}: {problem}; {ENTRY_HINT}")
            continue
        center = numbers(entry["center"], 2)
        s = float(numbers([entry["scale"]], 1)[0])
        joints = np.stack([numbers(j, 2) for j in entry["joints"]])
        vis = np.asarray(entry["joints_vis"], dtype=np.float32)
        image = entry["image"]
        if s <= 0:
            report.add("degenerate box", f"{where}: center {center.tolist()} scale {show(entry['scale'])}")
            continue
        if vis.max() <= 0:
            report.add("no labelled keypoints", where)
            continue
        scale = np.array([s, s], dtype=np.float32)
        if center[0] != -1:
            center[1] += 15 * scale[1]
            scale *= 1.25
        if not (np.isfinite(center).all() and np.isfinite(scale).all() and (scale > 0).all()):
            report.add("degenerate box", f"{where}: center {center.tolist()} scale {show(entry['scale'])}")
            continue
        records.append(
            PersonRecord(
                key=f"{key_prefix}{index}",
                image_path=image_dir / image,
                image_id=index,
                center=center - 1,
                scale=scale,
                joints=joints - 1,
                visible=(vis > 0).astype(np.float32),
                annotation_id=index,
                extra={"image": image},
            )
        )
    return records, report
