"""The people kept in an image: the reference's rescoring and OKS-NMS over its decoded poses."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from transpose.evaluation.coco import nms_per_image, rescore
from transpose.geometry import PIXEL_STD
from transpose.keypoints import KeypointSet
from transpose.predict.batching import CropJob


@dataclass
class Person:
    """One kept person: its box, crop geometry, keypoints in image coordinates and the rescored score."""

    image_id: int
    file: str
    index: int  # 1-based within its image, best first
    box: np.ndarray
    box_score: float
    center: np.ndarray
    scale: np.ndarray
    keypoints: np.ndarray  # [K, 2]
    maxvals: np.ndarray  # [K]
    score: float


def keep_people(job: CropJob, keypoints: np.ndarray, maxvals: np.ndarray, keypoint_set: KeypointSet) -> list[Person]:
    """The reference's rescoring (box score x mean maxval above 0.2) and OKS-NMS (0.9) within one image."""
    if not len(keypoints):
        return []
    scores = rescore(maxvals, job.box_scores)
    poses = np.concatenate([keypoints, maxvals[..., None]], axis=2).astype(np.float64)
    areas = job.scales[:, 0] * job.scales[:, 1] * PIXEL_STD**2
    kept = nms_per_image(poses, scores, areas, [job.source.image_id] * len(poses), keypoint_set.sigmas)
    return [
        Person(
            image_id=job.source.image_id,
            file=job.source.path.name,
            index=rank + 1,
            box=job.boxes[j],
            box_score=float(job.box_scores[j]),
            center=job.centers[j],
            scale=job.scales[j],
            keypoints=keypoints[j],
            maxvals=maxvals[j],
            score=float(scores[j]),
        )
        for rank, j in enumerate(kept)
    ]
