"""Keypoint sets: names, left/right flip pairs, OKS sigmas, skeleton and body halves.

COCO and MPII are built in; any COCO-format keypoint category (OCHuman, PoseTrack, ...) becomes a
KeypointSet with `from_coco_category`, its flip pairs found from the left/right names.
"""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class KeypointSet:
    name: str
    names: tuple[str, ...]
    flip_pairs: tuple[tuple[int, int], ...]
    skeleton: tuple[tuple[int, int], ...]  # 0-based index pairs, for drawing
    sigmas: tuple[float, ...] | None = None  # OKS per-keypoint sigmas; None where OKS is not used
    upper_body: tuple[int, ...] = ()  # half-body augmentation
    lower_body: tuple[int, ...] = ()

    @property
    def num_keypoints(self) -> int:
        return len(self.names)

    def flip_index(self) -> list[int]:
        """Channel order that swaps left and right."""
        order = list(range(self.num_keypoints))
        for a, b in self.flip_pairs:
            order[a], order[b] = b, a
        return order

    def with_sigmas(self, sigmas) -> KeypointSet:
        sigmas = tuple(float(s) for s in sigmas)
        if len(sigmas) != self.num_keypoints:
            raise ValueError(f"{self.name} has {self.num_keypoints} keypoints but {len(sigmas)} sigmas were given")
        return KeypointSet(
            self.name, self.names, self.flip_pairs, self.skeleton, sigmas, self.upper_body, self.lower_body
        )


COCO_SIGMAS = (
    0.026, 0.025, 0.025, 0.035, 0.035, 0.079, 0.079, 0.072, 0.072,
    0.062, 0.062, 0.107, 0.107, 0.087, 0.087, 0.089, 0.089,
)  # fmt: skip

COCO = KeypointSet(
    name="coco",
    names=(
        "nose",
        "left_eye",
        "right_eye",
        "left_ear",
        "right_ear",
        "left_shoulder",
        "right_shoulder",
        "left_elbow",
        "right_elbow",
        "left_wrist",
        "right_wrist",
        "left_hip",
        "right_hip",
        "left_knee",
        "right_knee",
        "left_ankle",
        "right_ankle",
    ),
    flip_pairs=((1, 2), (3, 4), (5, 6), (7, 8), (9, 10), (11, 12), (13, 14), (15, 16)),
    skeleton=(
        (15, 13),
        (13, 11),
        (16, 14),
        (14, 12),
        (11, 12),
        (5, 11),
        (6, 12),
        (5, 6),
        (5, 7),
        (6, 8),
        (7, 9),
        (8, 10),
        (1, 2),
        (0, 1),
        (0, 2),
        (1, 3),
        (2, 4),
        (3, 5),
        (4, 6),
    ),
    sigmas=COCO_SIGMAS,
    upper_body=tuple(range(11)),
    lower_body=tuple(range(11, 17)),
)

MPII = KeypointSet(
    name="mpii",
    names=(
        "right_ankle",
        "right_knee",
        "right_hip",
        "left_hip",
        "left_knee",
        "left_ankle",
        "pelvis",
        "thorax",
        "upper_neck",
        "head_top",
        "right_wrist",
        "right_elbow",
        "right_shoulder",
        "left_shoulder",
        "left_elbow",
        "left_wrist",
    ),
    flip_pairs=((0, 5), (1, 4), (2, 3), (10, 15), (11, 14), (12, 13)),
    skeleton=(
        (0, 1),
        (1, 2),
        (2, 6),
        (6, 3),
        (3, 4),
        (4, 5),
        (6, 7),
        (7, 8),
        (8, 9),
        (7, 12),
        (12, 11),
        (11, 10),
        (7, 13),
        (13, 14),
        (14, 15),
    ),
    upper_body=tuple(range(7, 16)),
    lower_body=tuple(range(0, 7)),
)

_SIDE = re.compile(r"^(left|right|l|r)([_\s-]?)(.+)$", re.IGNORECASE)


def _mirror_name(name: str) -> str | None:
    match = _SIDE.match(name)
    if not match:
        return None
    side, sep, rest = match.groups()
    other = {"left": "right", "right": "left", "l": "r", "r": "l"}[side.lower()]
    if side.isupper():
        other = other.upper()
    elif side[0].isupper():
        other = other.capitalize()
    return f"{other}{sep}{rest}"


def from_coco_category(category: dict, sigmas=None) -> KeypointSet:
    """KeypointSet of a COCO-format category with `keypoints` names and a 1-based `skeleton`.

    Sigmas: the given ones, else COCO's when the names are COCO's 17, else None (OKS then needs them).
    """
    names = tuple(category.get("keypoints") or ())
    if not names:
        raise ValueError(f"category {category.get('name', category.get('id'))!r} lists no keypoint names")
    index = {n: i for i, n in enumerate(names)}
    pairs = []
    for i, n in enumerate(names):
        j = index.get(_mirror_name(n) or "")
        if j is not None and i < j:
            pairs.append((i, j))
    skeleton = tuple(
        (int(a) - 1, int(b) - 1)
        for a, b in category.get("skeleton") or ()
        if 0 < a <= len(names) and 0 < b <= len(names)
    )
    if sigmas is None and names == COCO.names:
        sigmas = COCO_SIGMAS
    upper = COCO.upper_body if names == COCO.names else ()
    lower = COCO.lower_body if names == COCO.names else ()
    kset = KeypointSet(str(category.get("name", "custom")), names, tuple(pairs), skeleton, None, upper, lower)
    return kset.with_sigmas(sigmas) if sigmas is not None else kset


KEYPOINT_SETS = {"coco": COCO, "mpii": MPII}
