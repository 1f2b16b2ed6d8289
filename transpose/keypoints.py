"""Keypoint sets: names, left/right flip pairs, OKS sigmas, skeleton and body halves.

A keypoint set is a fact of the data: it is read from the dataset's own file (a COCO-format category, with
`from_coco_category`), or is MPII's for MPII's files. From there it travels as a plain dict (`to_dict` /
`from_dict`): the shard manifest records it, the model card carries it, and evaluation, prediction and
explanation read it back. COCO and MPII are built in.
"""

from __future__ import annotations

import math
import numbers
import re
from dataclasses import dataclass


class KeypointSetError(ValueError):
    """A keypoint set that cannot be used; the message names its source and what to fix."""


@dataclass(frozen=True)
class KeypointSet:
    name: str
    names: tuple[str, ...]
    flip_pairs: tuple[tuple[int, int], ...]  # 0-based, each (left, right) once
    skeleton: tuple[tuple[int, int], ...]  # 0-based index pairs, for drawing
    sigmas: tuple[float, ...] | None = None  # OKS per-keypoint sigmas; None where OKS is not used
    upper_body: tuple[int, ...] = ()  # half-body augmentation; () when the set has no known halves
    lower_body: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        where = f"keypoint set {self.name!r}"
        if not self.names or not all(isinstance(n, str) and n for n in self.names):
            raise KeypointSetError(f"{where}: keypoint names must be non-empty strings, got {list(self.names)}")
        if len(set(self.names)) != len(self.names):
            doubled = sorted({n for n in self.names if self.names.count(n) > 1})
            raise KeypointSetError(f"{where}: keypoint names repeat: {', '.join(doubled)}")
        k = len(self.names)
        for label, pairs in (("flip_pairs", self.flip_pairs), ("skeleton", self.skeleton)):
            for pair in pairs:
                if len(pair) != 2 or not all(isinstance(i, int) and 0 <= i < k for i in pair):
                    raise KeypointSetError(f"{where}: {label} entry {list(pair)} is not two indices in 0..{k - 1}")
        flipped = [i for pair in self.flip_pairs for i in pair]
        if len(set(flipped)) != len(flipped):
            raise KeypointSetError(f"{where}: a keypoint is in more than one flip pair: {list(self.flip_pairs)}")
        if self.sigmas is not None and (
            len(self.sigmas) != k or not all(math.isfinite(s) and s > 0 for s in self.sigmas)
        ):
            raise KeypointSetError(f"{where}: needs {k} positive OKS sigmas, got {list(self.sigmas)}")

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
            raise KeypointSetError(
                f"{self.name} has {self.num_keypoints} keypoints but {len(sigmas)} sigmas were given"
            )
        return KeypointSet(
            self.name, self.names, self.flip_pairs, self.skeleton, sigmas, self.upper_body, self.lower_body
        )

    def to_dict(self) -> dict:
        """A JSON-ready dict (the manifest's and the model card's `keypoints`)."""
        return {
            "name": self.name,
            "names": list(self.names),
            "flip_pairs": [list(p) for p in self.flip_pairs],
            "skeleton": [list(p) for p in self.skeleton],
            "sigmas": None if self.sigmas is None else list(self.sigmas),
            "upper_body": list(self.upper_body),
            "lower_body": list(self.lower_body),
        }

    @classmethod
    def from_dict(cls, data: dict, where: str = "keypoints") -> KeypointSet:
        """The inverse of `to_dict`; a malformed entry raises a KeypointSetError naming `where`."""
        if not isinstance(data, dict):
            raise KeypointSetError(f"{where}: not a keypoint set ({type(data).__name__}); expected name, names, ...")
        try:
            names = data["names"]
            if not isinstance(names, (list, tuple)):
                raise KeypointSetError(f"'names' must be a list of keypoint names, got {type(names).__name__}")
            k = len(names)
            return cls(
                name=str(data["name"]),
                names=tuple(names),
                flip_pairs=_index_pairs(data.get("flip_pairs") or (), k, "flip_pairs"),
                skeleton=_index_pairs(data.get("skeleton") or (), k, "skeleton"),
                sigmas=None if data.get("sigmas") is None else _positive_floats(data["sigmas"], k, "sigmas", where),
                upper_body=_indices(data.get("upper_body") or (), k, "upper_body"),
                lower_body=_indices(data.get("lower_body") or (), k, "lower_body"),
            )
        except KeypointSetError as err:
            raise KeypointSetError(f"{where}: {err}" if not str(err).startswith(where) else str(err)) from None
        except (KeyError, TypeError, ValueError) as err:
            raise KeypointSetError(
                f"{where}: not a keypoint set ({err!r}); expected name, names, flip_pairs, ..."
            ) from None


def _is_index(value, k: int) -> bool:
    """A 0-based keypoint index: an int (not a bool) in 0..k-1."""
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < k


def _indices(value, k: int, label: str) -> tuple[int, ...]:
    if not isinstance(value, (list, tuple)) or not all(_is_index(i, k) for i in value):
        raise KeypointSetError(f"{label} must be a list of keypoint indices in 0..{k - 1}, got {value!r}")
    return tuple(value)


def _index_pairs(value, k: int, label: str) -> tuple[tuple[int, int], ...]:
    """0-based index pairs (the `to_dict` layout) checked: anything else is an error naming the entry."""
    if not isinstance(value, (list, tuple)):
        raise KeypointSetError(f"{label} must be a list of [a, b] keypoint indices, got {value!r}")
    for entry in value:
        if not isinstance(entry, (list, tuple)) or len(entry) != 2 or not all(_is_index(i, k) for i in entry):
            raise KeypointSetError(f"{label} entry {entry!r} is not two indices in 0..{k - 1}")
    return tuple(tuple(entry) for entry in value)


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


def _one_based_pairs(value, k: int, label: str, where: str) -> tuple[tuple[int, int], ...]:
    """1-based index pairs (COCO's `skeleton` convention) -> 0-based; anything else is a clear error."""
    if not isinstance(value, (list, tuple)):
        raise KeypointSetError(f"{where}: '{label}' must be a list of [a, b] 1-based keypoint indices")
    pairs = []
    for entry in value:
        ok = isinstance(entry, (list, tuple)) and len(entry) == 2
        ok = ok and all(isinstance(i, int) and not isinstance(i, bool) and 1 <= i <= k for i in entry)
        if not ok:
            raise KeypointSetError(f"{where}: '{label}' entry {entry!r} is not [a, b] with 1 <= a, b <= {k}")
        pairs.append((entry[0] - 1, entry[1] - 1))
    return tuple(pairs)


def _flip_pairs_from_names(names: tuple[str, ...]) -> tuple[tuple[int, int], ...]:
    index = {n: i for i, n in enumerate(names)}
    pairs = []
    for i, name in enumerate(names):
        j = index.get(_mirror_name(name) or "")
        if j is not None and i < j:
            pairs.append((i, j))
    return tuple(pairs)


def _positive_floats(value, k: int, label: str, where: str) -> tuple[float, ...]:
    """k positive finite numbers (a list, tuple or array of them; not strings, not bools)."""
    values: tuple[float, ...] = ()
    if not isinstance(value, (str, bytes, dict)):
        try:
            items = list(value)
            if all(isinstance(v, numbers.Real) and not isinstance(v, bool) for v in items):
                values = tuple(float(v) for v in items)
        except (TypeError, ValueError, OverflowError):
            values = ()
    if len(values) != k or not all(math.isfinite(v) and v > 0 for v in values):
        raise KeypointSetError(f"{where}: {label} must be {k} positive numbers (one per keypoint), got {value!r}")
    return values


def from_coco_category(category: dict, sigmas=None, where: str = "category") -> KeypointSet:
    """The keypoint set of a COCO-format category: its `keypoints` names and 1-based `skeleton`.

    Flip pairs: the category's `flip_pairs` (1-based, like `skeleton`) when it has them, else found from the
    left/right names (left_wrist <-> right_wrist, L_Hand <-> R_Hand). OKS sigmas, in this order: the category's
    own `sigmas`, else the `sigmas` given here (a dataset's param), else COCO's when the names are COCO's 17;
    else None, and OKS evaluation then refuses the set with a message that says so. Sigmas given here that
    contradict the file's own are an error. Body halves (for half-body augmentation) are known for COCO's names
    only.
    """
    if not isinstance(category, dict):
        raise KeypointSetError(f"{where}: a category must be a JSON object, got {type(category).__name__}")
    names = category.get("keypoints")
    if not isinstance(names, list) or not names or not all(isinstance(n, str) and n for n in names):
        raise KeypointSetError(f"{where}: 'keypoints' must be a non-empty list of keypoint names")
    names = tuple(names)
    k = len(names)
    skeleton = _one_based_pairs(category.get("skeleton") or [], k, "skeleton", where)
    if category.get("flip_pairs") is not None:
        flip_pairs = _one_based_pairs(category["flip_pairs"], k, "flip_pairs", where)
    else:
        flip_pairs = _flip_pairs_from_names(names)
    given = None if sigmas is None else _positive_floats(sigmas, k, "the sigmas param", where)
    own = None if category.get("sigmas") is None else _positive_floats(category["sigmas"], k, "'sigmas'", where)
    if own is not None and given is not None and own != given:
        raise KeypointSetError(
            f"{where}: the file gives its own sigmas {list(own)}, which differ from the sigmas param {list(given)}: "
            "drop the param (or make it equal)"
        )
    coco_names = names == COCO.names
    resolved = own or given or (COCO_SIGMAS if coco_names else None)
    name = category.get("name")
    try:
        return KeypointSet(
            name=str(name) if isinstance(name, str) and name else "custom",
            names=names,
            flip_pairs=flip_pairs,
            skeleton=skeleton,
            sigmas=resolved,
            upper_body=COCO.upper_body if coco_names else (),
            lower_body=COCO.lower_body if coco_names else (),
        )
    except KeypointSetError as err:
        raise KeypointSetError(f"{where}: {err}") from None
