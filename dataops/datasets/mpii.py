"""MPII in the HRNet/MMPose json layout as PersonRecords.

Each entry: {"image", "joints" [[x, y] x 16] (1-based, MATLAB), "joints_vis" [16], "center" [x, y], "scale" s}.
As the reference: center y += 15 * s and s *= 1.25 (when the center is given), then 1-based -> 0-based for the
center and the joints. The scale is square [s, s], with no aspect widening.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from dataops.datasets.records import PersonRecord, SkipReport
from transpose.keypoints import MPII


def read_mpii(
    ann_file: str | Path, image_dir: str | Path, key_prefix: str = "m"
) -> tuple[list[PersonRecord], SkipReport]:
    ann_file, image_dir = Path(ann_file), Path(image_dir)
    if not ann_file.is_file():
        raise FileNotFoundError(f"MPII annotation file {ann_file} does not exist")
    try:
        entries = json.loads(ann_file.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{ann_file} is not valid JSON ({err}); expected the HRNet/MMPose MPII json list") from err
    if not isinstance(entries, list):
        raise ValueError(f"{ann_file}: expected a JSON list of {{image, joints, joints_vis, center, scale}}")
    report = SkipReport()
    records = []
    k = MPII.num_keypoints
    for index, entry in enumerate(entries):
        where = f"{ann_file}: [{index}]"
        try:
            center = np.asarray(entry["center"], dtype=np.float32).reshape(2)
            s = float(entry["scale"])
            joints = np.asarray(entry["joints"], dtype=np.float32).reshape(k, 2)
            vis = np.asarray(entry["joints_vis"], dtype=np.float32).reshape(k)
            image = str(entry["image"])
        except (KeyError, TypeError, ValueError):
            report.add("malformed annotation", f"{where}: needs image, center [x,y], scale, 16 joints, 16 joints_vis")
            continue
        if not (np.isfinite(center).all() and np.isfinite(joints).all() and np.isfinite(s)) or s <= 0:
            report.add("degenerate box", f"{where}: center {center.tolist()} scale {s}")
            continue
        if vis.max() <= 0:
            report.add("no labelled keypoints", where)
            continue
        scale = np.array([s, s], dtype=np.float32)
        if center[0] != -1:
            center[1] += 15 * scale[1]
            scale *= 1.25
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
