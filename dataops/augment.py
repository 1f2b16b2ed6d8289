"""The reference's training augmentation, defined once: its constants, its random draws (numpy) and the
geometry both loaders build from them.

Order (spec): half-body -> [shift] -> scale -> rotation (only when a p=0.6 gate passes) -> flip.
    shift    not in the reference (off by default): with probability shift_prob, the centre moves by
             U(-1, 1) * shift_factor * the box size in x and in y, as MMPose's RandomBBoxTransform; it
             teaches the model crops that are not centred on the person, as detected boxes give
    scale    s * clip(N(0,1) * 0.35 + 1, 0.65, 1.35)
    rotation clip(N(0,1) * 45, -90, 90) with probability 0.6, else 0
    flip     probability 0.5: mirror about the crop centre (= x -> W-1-x of the image), swap left/right
    half-body probability 0.3 when more than 8 joints are visible; upper body when N(0,1) < 0.5 (about 69%)
              and it has more than 2 visible joints, else the lower body if it has more than 2, else upper
The DALI graph draws the same distributions with fn.random.* and these constants; the PyTorch twin uses
`draw_params`. Both turn the drawn parameters into a matrix with `crop_matrix` / the same chain of ops.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from transpose.geometry import PIXEL_STD


@dataclass(frozen=True)
class AugmentConfig:
    scale_factor: float = 0.35
    rotation_factor: float = 45.0
    rotation_prob: float = 0.6
    flip_prob: float = 0.5
    half_body_prob: float = 0.3
    half_body_min_joints: int = 8  # more than this many visible joints
    upper_body_threshold: float = 0.5  # upper body when N(0,1) < this
    shift_factor: float = 0.0  # not in the reference: largest centre shift, a fraction of the box size
    shift_prob: float = 0.3  # MMPose's default (with its shift_factor 0.16)
    enabled: bool = True  # False: validation (no augmentation)

    def __post_init__(self) -> None:
        ranges = {  # key: (ok, the allowed range)
            "scale_factor": (0 <= self.scale_factor < 1, "[0, 1)"),
            "rotation_factor": (0 <= self.rotation_factor <= 180, "[0, 180] degrees"),
            "rotation_prob": (0 <= self.rotation_prob <= 1, "[0, 1]"),
            "flip_prob": (0 <= self.flip_prob <= 1, "[0, 1]"),
            "half_body_prob": (0 <= self.half_body_prob <= 1, "[0, 1]"),
            "half_body_min_joints": (self.half_body_min_joints >= 0, "0 or more"),
            "shift_factor": (0 <= self.shift_factor < 1, "[0, 1)"),
            "shift_prob": (0 <= self.shift_prob <= 1, "[0, 1]"),
        }
        for key, (ok, allowed) in ranges.items():
            if not ok:
                raise ValueError(f"{key}: must be in {allowed}, got {getattr(self, key)!r}")

    @property
    def max_scale(self) -> float:
        return 1.0 + self.scale_factor if self.enabled else 1.0

    @property
    def max_shift(self) -> float:
        return self.shift_factor if self.enabled and self.shift_prob > 0 else 0.0

    def reaches_beyond(self, limit: AugmentConfig) -> list[str]:
        """The fields in which this config crops further from the box than `limit` (the one a shard's regions
        were stored for) reaches: scale and shift (a stored region is a disc, so any rotation stays inside)."""
        pairs = {"scale_factor": (self.max_scale, limit.max_scale), "shift_factor": (self.max_shift, limit.max_shift)}
        return [name for name, (wanted, stored) in pairs.items() if wanted > stored + 1e-9]


@dataclass
class AugmentParams:
    """What one draw decided for one sample."""

    center: np.ndarray  # (2,) after half-body
    scale: np.ndarray  # (2,) after half-body and scaling
    rotation: float  # degrees
    flip: bool
    half_body: int  # 0 none, 1 upper, 2 lower


def half_body_box(joints, visible, body_ids, aspect_ratio: float) -> tuple[np.ndarray, np.ndarray] | None:
    """Center/scale of the visible joints in `body_ids`: mean centre; extent + 1 fixed to the aspect, x1.5."""
    chosen = np.asarray([joints[i] for i in body_ids if visible[i] > 0], dtype=np.float32)
    if len(chosen) < 2:
        return None
    center = chosen.mean(axis=0)
    w, h = chosen.max(axis=0) - chosen.min(axis=0) + 1
    if w > aspect_ratio * h:
        h = w / aspect_ratio
    elif w < aspect_ratio * h:
        w = h * aspect_ratio
    return center.astype(np.float32), (np.array([w, h], dtype=np.float32) / PIXEL_STD * 1.5)


def half_body_options(joints, visible, upper_ids, aspect_ratio: float) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """The (at most two) half-body boxes a sample can get: {1: upper, 2: lower}, with the reference's fallbacks.

    Key 1 is what an "upper" draw gives, key 2 what a "lower" draw gives (either may fall back to the other half).
    """
    k = len(visible)
    lower_ids = [i for i in range(k) if i not in set(upper_ids)]
    n_upper = sum(1 for i in upper_ids if visible[i] > 0)
    n_lower = sum(1 for i in lower_ids if visible[i] > 0)
    upper = half_body_box(joints, visible, upper_ids, aspect_ratio)
    lower = half_body_box(joints, visible, lower_ids, aspect_ratio)
    on_upper_draw = upper if n_upper > 2 else (lower if n_lower > 2 else upper)
    on_lower_draw = lower if n_lower > 2 else upper
    return {key: box for key, box in ((1, on_upper_draw), (2, on_lower_draw)) if box is not None}


@dataclass(frozen=True)
class FixedDraw:
    """The same augmentation for every sample (tests, debugging): scale multiplier, rotation in degrees,
    flip, half-body 0 (none), 1 (an "upper" draw) or 2 (a "lower" draw), and the centre shift (x, y) as
    fractions of the box size."""

    scale_mult: float = 1.0
    rotation: float = 0.0
    flip: bool = False
    half_body: int = 0
    shift: tuple[float, float] = (0.0, 0.0)


def draw_params(
    rng: np.random.Generator | None,
    config: AugmentConfig,
    center,
    scale,
    num_visible: int,
    options: dict[int, tuple[np.ndarray, np.ndarray]],
    fixed: FixedDraw | None = None,
) -> AugmentParams:
    """One draw of the reference augmentation for one sample; `options` from `half_body_options`."""
    center = np.asarray(center, dtype=np.float32).copy()
    scale = np.asarray(scale, dtype=np.float32).copy()
    if fixed is not None:
        half = fixed.half_body if fixed.half_body in options else 0
        if half:
            center, scale = options[half]
        center = center + np.asarray(fixed.shift, dtype=np.float32) * scale * PIXEL_STD
        return AugmentParams(center, scale * fixed.scale_mult, float(fixed.rotation), bool(fixed.flip), half)
    if not config.enabled:
        return AugmentParams(center, scale, 0.0, False, 0)
    half = 0
    if num_visible > config.half_body_min_joints and rng.random() < config.half_body_prob:
        pick = 1 if rng.standard_normal() < config.upper_body_threshold else 2
        if pick in options:
            center, scale = options[pick]
            half = pick
    if config.max_shift > 0 and rng.random() < config.shift_prob:  # when off, no draw: the reference's stream
        shift = rng.uniform(-1.0, 1.0, size=2) * config.shift_factor
        center = (center + shift * scale * PIXEL_STD).astype(np.float32)
    sf, rf = config.scale_factor, config.rotation_factor
    scale = scale * float(np.clip(rng.standard_normal() * sf + 1, 1 - sf, 1 + sf))
    rotation = (
        float(np.clip(rng.standard_normal() * rf, -2 * rf, 2 * rf)) if rng.random() <= config.rotation_prob else 0.0
    )
    flip = bool(rng.random() <= config.flip_prob)
    return AugmentParams(center, scale, rotation, flip, half)


def crop_matrix(center, scale, rotation: float, flip: bool, output_size) -> np.ndarray:
    """2x3 image -> crop matrix: S R(-rot) D (p - c) + crop centre, D = diag(-1, 1) when flipped.

    Equal to flipping the image (x -> W-1-x, c -> W-1-c) and then taking the reference's affine.
    output_size is (w, h); the factor is (w-1) / (scale_w * 200 - 1) as in the unbiased affine.
    """
    dst_w, dst_h = float(output_size[0]), float(output_size[1])
    factor = (dst_w - 1) / (float(scale[0]) * PIXEL_STD - 1)
    theta = np.deg2rad(rotation)
    cs, sn = np.cos(theta), np.sin(theta)
    linear = factor * np.array([[cs, sn], [-sn, cs]])
    if flip:
        linear = linear @ np.diag([-1.0, 1.0])
    dst_center = np.array([(dst_w - 1) * 0.5, (dst_h - 1) * 0.5])
    return np.hstack([linear, (dst_center - linear @ np.asarray(center, np.float64))[:, None]])


def sample_region(
    center,
    scale,
    options: dict,
    config: AugmentConfig,
    aspect_ratio: float,
    width: int,
    height: int,
    slack: float = 2.0,
):
    """Integer pixel box [x0, y0, x1, y1) of the image that any augmentation of this sample can read.

    The crop reads a (sw x sw/aspect) rectangle around its centre, turned by any angle: a disc of radius
    hypot(sw, sh)/2, whose centre a shift moves by up to shift_factor * hypot(sw, sh) (sizes before scaling).
    Its union over the plain and the half-body boxes at the largest scale and shift, plus bilinear slack,
    clipped to the image.
    """
    boxes = [(np.asarray(center), np.asarray(scale))] + ([*options.values()] if config.enabled else [])
    lo = np.array([np.inf, np.inf])
    hi = -lo
    for c, s in boxes:
        diagonal = float(np.hypot(1.0, 1.0 / aspect_ratio)) * float(s[0]) * PIXEL_STD
        radius = (0.5 * config.max_scale + config.max_shift) * diagonal + slack
        lo = np.minimum(lo, np.asarray(c) - radius)
        hi = np.maximum(hi, np.asarray(c) + radius)
    x0, y0 = int(np.clip(np.floor(lo[0]), 0, width)), int(np.clip(np.floor(lo[1]), 0, height))
    x1, y1 = int(np.clip(np.ceil(hi[0]) + 1, 0, width)), int(np.clip(np.ceil(hi[1]) + 1, 0, height))
    return x0, y0, x1, y1
