"""One synthetic photograph: background, clutter, people and occluders painted far to near, then its labels.

Layout: a horizon row and a camera-height ratio give each ground row a person size (a person whose feet are on
row g is `(g - horizon) / ratio` px tall), so far people are small and high in the frame. People's nominal
heights are drawn from `person_height` (log-uniform tilted toward tall: exp(log lo + u^0.75 log(hi/lo))); they
stand on the row of their size (kept inside the frame when they fit) with bounded overlap between people, and a
fraction (`truncation`) is cut by the left/right or bottom edge (tall ones also by the top). Occluders stand
mostly just in front of someone. People with fewer than `min_visible_area` visible pixels are not annotated.

Labels are read off the owner/part map (person.py) once everything is painted:
    * COCO v = 0: the joint is outside the image (x, y stored as 0), or it is an eye or the nose of a person
      looking away from the camera (not labelled, as in the prototype; COCO mostly leaves them out too);
    * v = 1: inside, but the pixel belongs to another person, an object, or another part of the same person
      drawn over it (the far-side joints of side and back views), or it is a face point turned away;
    * v = 2: inside and the pixel shows the joint's own part (for a hip or shoulder on the near half of the
      body, the torso counts as its own part).
    * MPII: a joint is labelled (joints_vis 1) when it is inside the image, visible or not, as in MPII.
Coordinates are pixel coordinates with pixel centres on integers (the reference's convention), rounded to 0.01.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from dataops.synthetic.appearance import sample_outfit
from dataops.synthetic.background import CLUTTER_KINDS, OCCLUDER_KINDS, Thing, background, draw_thing, floor_row
from dataops.synthetic.body import forward_kinematics, root_rotation, sample_pose, sample_proportions
from dataops.synthetic.config import SyntheticConfig
from dataops.synthetic.person import NUM_PARTS, OBJECT, PART, Person, paint_person
from dataops.synthetic.sampling import pick

SPLITS = {"coco_train": 1, "coco_val": 2, "mpii_train": 3, "mpii_valid": 4}
LABEL_ONLY_STREAM = 2  # the last word of a label-only scene's seed (the detector's stream of an image is 1)

COCO_POINTS = (
    "nose", "l_eye", "r_eye", "l_ear", "r_ear", "l_shoulder", "r_shoulder", "l_elbow", "r_elbow",
    "l_wrist", "r_wrist", "l_hip", "r_hip", "l_knee", "r_knee", "l_ankle", "r_ankle",
)  # fmt: skip
MPII_POINTS = (
    "r_ankle", "r_knee", "r_hip", "l_hip", "l_knee", "l_ankle", "pelvis", "thorax", "upper_neck", "head_top",
    "r_wrist", "r_elbow", "r_shoulder", "l_shoulder", "l_elbow", "l_wrist",
)  # fmt: skip
# The parts whose paint shows a joint; if another part is on top, the joint is (self-)occluded.
OWNERS = {
    "nose": ("head",),
    "eye": ("head",),
    "ear": ("head",),
    "shoulder": ("upper_arm",),
    "elbow": ("upper_arm", "forearm"),
    "wrist": ("forearm", "hand"),
    "hip": ("thigh", "skirt"),
    "knee": ("thigh", "shin", "skirt"),
    "ankle": ("shin", "foot"),
    "pelvis": ("torso", "skirt"),
    "thorax": ("torso", "neck"),
    "upper_neck": ("neck", "head"),
    "head_top": ("head",),
}


def _owner_codes(name: str, base: int) -> frozenset[int]:
    side, _, joint = name.partition("_") if name[:2] in ("l_", "r_") else ("", "", name)
    parts = OWNERS[joint]
    return frozenset(base + PART[f"{side}_{p}" if f"{side}_{p}" in PART else p] for p in parts)


@dataclass
class PersonLabel:
    """Labels of one annotated person (0-based pixel coordinates)."""

    keypoints: np.ndarray  # [17, 3] COCO x, y, v
    projected: np.ndarray  # [17, 2] where every COCO keypoint is, labelled or not (for checks)
    looks_away: bool  # the head faces away: nose and eyes are not labelled
    bbox: tuple[int, int, int, int]  # x, y, w, h of the visible mask
    area: int  # visible mask pixels
    mask: np.ndarray  # [h, w] bool: the visible mask inside the box (bbox[1]:+h, bbox[0]:+w) of the image
    mpii_joints: np.ndarray  # [16, 2]
    mpii_labelled: np.ndarray  # [16] bool
    mpii_ok: bool  # annotate this person in MPII (head in the image, enough of the body visible)
    head_box: np.ndarray  # [2, 2] x1, y1, x2, y2
    center: np.ndarray  # [2] person centre (MPII)
    scale: float  # nominal height / 200 (MPII)
    height: float  # nominal standing height in pixels
    kind: str
    facing: str  # "front", "side", "back"


@dataclass
class Sample:
    """One rendered image, its annotated people (painting order, far to near) and its non-person objects."""

    image: np.ndarray | None  # H x W x 3 uint8 BGR; None for a label-only scene (`sample_labels`)
    people: list[PersonLabel]
    things: list[Thing]


def sample_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """The generator of one image: a function of (seed, split, index) only, whatever the worker count."""
    return np.random.default_rng(np.random.SeedSequence([int(seed), SPLITS[split], int(index)]))


def _facing(rng, weights) -> tuple[str, float]:
    facing = pick(rng, ("front", "side", "back"), weights)
    if facing == "front":
        return facing, float(np.clip(rng.normal(0, 22), -50, 50))
    if facing == "back":
        return facing, float(180 + np.clip(rng.normal(0, 22), -50, 50))
    return facing, float(pick(rng, (-1.0, 1.0)) * rng.uniform(55, 125))


def _iou(a, b) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _cover(a, b) -> float:
    """Fraction of box a covered by box b."""
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    return iw * ih / max(1e-6, (a[2] - a[0]) * (a[3] - a[1]))


def _sample_person(cfg: SyntheticConfig, rng) -> tuple[Person, str]:
    """A posed, dressed person at the image origin, and which way they face ("front", "side", "back")."""
    kind = pick(rng, *zip(*cfg.pose_weights))
    facing, yaw = _facing(rng, cfg.facing_weights)
    lo, hi = cfg.person_height
    size = float(np.exp(np.log(lo) + rng.random() ** 0.75 * np.log(hi / lo)))  # log-uniform tilted up
    props = sample_proportions(rng)
    body = forward_kinematics(sample_pose(kind, rng), props, root_rotation(kind, yaw, rng), kind)
    seat = None
    if kind == "sit":
        seat = "chair" if abs(((yaw + 180) % 360) - 180) < 100 and rng.random() < 0.7 else "stool"
    elif kind == "lie" and rng.random() < 0.5:
        seat = "mat"
    return Person(body, sample_outfit(rng), kind, yaw, size, np.zeros(2), seat), facing


def _place(cfg: SyntheticConfig, rng, person: Person, horizon, floor, ratio, width, height) -> tuple[Person, float]:
    """The person moved onto the ground row that matches their size (or cut by the frame); and that row.

    Rows above `floor` (a room's wall) are moved down onto the floor. Only people taller than half the frame
    are cut at the top, and then their feet are out of the frame too, as in a close-up.
    """
    size, kind = person.height, person.kind
    feet = ("l_heel", "r_heel", "l_toe", "r_toe") if kind != "lie" else tuple(person.pts)
    lowest = max(person.pts[k][1] for k in feet)
    x0, y0, x1, y1 = person.extent()
    ground = horizon + ratio * size + rng.normal(0, 0.04 * size)
    if ground < floor + 2:
        ground = floor + rng.uniform(0.0, 0.15) * (height - floor)
    w, h = x1 - x0, y1 - y0
    mode = "none"
    if rng.random() < cfg.truncation:  # cut by the frame: 35-90% of the width or 50-95% of the height inside
        mode = pick(rng, ("side", "bottom", "top", "side+bottom"), (0.45, 0.35, 0.05, 0.15))
        if mode == "top" and y1 - y0 < 0.5 * height:
            mode = "bottom"
    if "side" in mode:
        inside = rng.uniform(0.35, 0.9)
        left = -(1 - inside) * w if rng.random() < 0.5 else width - inside * w
    else:
        left = rng.uniform(0, width - w) if w < width else rng.uniform(width - w, 0)
    oy = ground - lowest
    if "bottom" in mode:
        oy = height + rng.uniform(0.05, 0.5) * h - y1
    elif mode == "top":
        oy = max(-rng.uniform(0.05, 0.3) * h - y0, height - y1)
    elif -y0 <= height - 1 - y1:  # keep the whole person inside, as near their ground row as possible
        oy = float(np.clip(oy, -y0, height - 1 - y1))
    else:  # taller than the frame: keep the head in
        oy = -y0 + rng.uniform(0, 0.05) * height
    ground = oy + lowest
    origin = np.array([left - x0, oy])
    return Person(person.body, person.outfit, kind, person.yaw, size, origin, person.seat), ground


def _contact_shadow(img: np.ndarray, person: Person) -> None:
    """A soft dark ellipse on the ground under the feet (or under the whole body of someone lying)."""
    names = tuple(person.pts) if person.kind == "lie" else ("l_heel", "r_heel", "l_toe", "r_toe")
    pts = np.stack([person.pts[k] for k in names])
    h = person.height
    cx, cy = float(pts[:, 0].mean()), float(pts[:, 1].max()) - 0.01 * h
    ax = 0.5 * float(np.ptp(pts[:, 0])) + 0.08 * h
    ay = 0.035 * h + (0.2 * float(np.ptp(pts[:, 1])) if person.kind == "lie" else 0.0)
    height, width = img.shape[:2]
    x0, y0 = max(0, int(cx - ax - 2)), max(0, int(cy - ay - 2))
    x1, y1 = min(width, int(cx + ax + 3)), min(height, int(cy + ay + 3))
    if x1 - x0 < 2 or y1 - y0 < 2:
        return
    mask = np.zeros((y1 - y0, x1 - x0), np.float32)
    cv2.ellipse(mask, (round(cx - x0), round(cy - y0)), (max(1, round(ax)), max(1, round(ay))), 0, 0, 360, 1.0, -1)
    mask = cv2.GaussianBlur(mask, (0, 0), max(0.8, 0.3 * ay))
    roi = img[y0:y1, x0:x1]
    roi[...] = (roi * (1.0 - 0.4 * mask[..., None])).astype(np.uint8)


def _camera(img: np.ndarray, rng) -> np.ndarray:
    """Lens blur, white balance and vignetting (one low-resolution gain map), then sensor noise."""
    height, width = img.shape[:2]
    if rng.random() < 0.5:
        img = cv2.GaussianBlur(img, (3, 3), rng.uniform(0.4, 0.9))
    yy, xx = np.mgrid[0:1:16j, 0:1:16j]
    r2 = (2 * xx - 1) ** 2 + (2 * yy - 1) ** 2
    vignette = 1.0 - rng.uniform(0.0, 0.18) * r2
    gains = (vignette[..., None] * rng.uniform(0.9, 1.1, size=3)).astype(np.float32)
    img = cv2.multiply(img, cv2.resize(gains, (width, height), interpolation=cv2.INTER_LINEAR), dtype=cv2.CV_8U)
    noise = _noise_tile(height, width)
    ox, oy = int(rng.integers(0, 64)), int(rng.integers(0, 64))
    return cv2.add(img, noise[oy : oy + height, ox : ox + width], dtype=cv2.CV_8U)


_NOISE: dict[tuple[int, int], np.ndarray] = {}


def _noise_tile(height: int, width: int) -> np.ndarray:
    """Gaussian sensor noise (sigma 3 grey levels) from a fixed seed, with 64 spare rows and columns."""
    key = (height, width)
    if key not in _NOISE:
        rng = np.random.default_rng(12345)
        _NOISE[key] = np.round(rng.normal(0, 3.0, (height + 64, width + 64, 3))).astype(np.int16)
    return _NOISE[key]


def _visibility(person: Person, lab: np.ndarray, base: int, width: int, height: int, name: str, xy) -> int:
    """0 outside the image, 1 occluded, 2 visible (see the module docstring)."""
    x, y = xy
    if not (0 <= x <= width - 1 and 0 <= y <= height - 1):
        return 0
    frame = person.body.frames["head"]
    if name in ("nose", "l_eye", "r_eye"):
        if person.facing() < -0.3:
            return 0
        sgn = 0.0 if name == "nose" else (0.35 if name[0] == "l" else -0.35)
        normal = frame @ np.array([sgn, 0.1 * abs(sgn) / 0.35, 1.0])
        if normal[2] < (-0.1 if name == "nose" else 0.1):
            return 1
    elif name in ("l_ear", "r_ear"):
        normal = frame @ np.array([1.0 if name[0] == "l" else -1.0, 0.0, -0.15])
        if normal[2] < -0.25:
            return 1
    own = _owner_codes(name, base)
    xi, yi = round(float(x)), round(float(y))
    code = int(lab[yi, xi])
    if code in own:
        return 2
    if code == base + PART["torso"] and name[2:] in ("hip", "shoulder"):
        # a hip or shoulder under its own torso shows through the torso's surface unless it is on the far side
        ref = person.depth["pelvis" if name.endswith("hip") else "neck_base"]
        return 2 if person.depth[name] <= ref + 0.05 * person.height else 1
    if code != 0:
        return 1
    # background under the joint: it sits on the anti-aliased edge of its part; look at the 3x3 neighbourhood
    values = set(np.unique(lab[max(0, yi - 1) : yi + 2, max(0, xi - 1) : xi + 2]).tolist())
    if values & own:
        return 2
    return 1 if values - {0} else 2


def _label_person(person: Person, facing: str, lab: np.ndarray, base: int, cfg: SyntheticConfig) -> PersonLabel | None:
    width, height = cfg.image_size
    x0, y0, x1, y1 = person.extent()
    pad = 0.05 * person.height
    rx0, ry0 = max(0, int(x0 - pad)), max(0, int(y0 - pad))
    rx1, ry1 = min(width, int(x1 + pad) + 2), min(height, int(y1 + pad) + 2)
    if rx1 <= rx0 or ry1 <= ry0:
        return None
    roi = lab[ry0:ry1, rx0:rx1]
    local = (roi >= base) & (roi < base + NUM_PARTS)
    area = int(local.sum())
    if area < cfg.min_visible_area:
        return None
    rows, cols = np.flatnonzero(local.any(axis=1)), np.flatnonzero(local.any(axis=0))
    bbox = (rx0 + int(cols[0]), ry0 + int(rows[0]), int(cols[-1] - cols[0] + 1), int(rows[-1] - rows[0] + 1))
    mask = local[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    kpts = np.zeros((17, 3))
    projected = np.round(np.stack([person.pts[name] for name in COCO_POINTS]), 2)
    for k, name in enumerate(COCO_POINTS):
        v = _visibility(person, lab, base, width, height, name, projected[k])
        kpts[k] = (projected[k, 0], projected[k, 1], v) if v > 0 else (0.0, 0.0, 0.0)
    pts = dict(person.pts)
    pts["pelvis"], pts["thorax"] = person.mid("l_hip", "r_hip"), person.mid("l_shoulder", "r_shoulder")
    joints = np.round(np.stack([pts[name] for name in MPII_POINTS]), 2)
    inside = (joints[:, 0] >= 0) & (joints[:, 0] <= width - 1) & (joints[:, 1] >= 0) & (joints[:, 1] <= height - 1)
    lo, hi = np.minimum(joints.min(axis=0), pts["head_top"]), np.maximum(joints.max(axis=0), pts["head_top"])
    visible = int((kpts[:, 2] == 2).sum())
    mpii_ok = bool(inside[8] and inside[9] and inside.sum() >= 8 and visible >= 5)
    return PersonLabel(
        keypoints=kpts,
        projected=projected,
        looks_away=person.facing() < -0.3,
        bbox=bbox,
        area=area,
        mask=mask,
        mpii_joints=joints,
        mpii_labelled=inside,
        mpii_ok=mpii_ok,
        head_box=np.round(person.head_box(), 2),
        center=np.round(0.5 * (lo + hi), 2),
        scale=round(person.height / 200.0, 4),
        height=round(person.height, 2),
        kind=person.kind,
        facing=facing,
    )


def render_sample(cfg: SyntheticConfig, split: str, index: int) -> Sample:
    """Render image `index` of `split` ("coco_train", "coco_val", "mpii_train", "mpii_valid") with its labels."""
    rng = sample_rng(cfg.seed, split, index)
    layout = _layout(rng, cfg)
    img, floor = background(rng, *cfg.image_size, layout.horizon)
    people, things = _populate(cfg, rng, img, layout, floor)
    return Sample(image=_camera(img, rng), people=people, things=things)


def sample_labels(cfg: SyntheticConfig, split: str, index: int) -> Sample:
    """The labels of a scene without its pixels (`image` is None): people, occluders and clutter sampled, placed
    and painted into the owner/part map only, then labelled by the rules above, as `render_sample` does.

    For label files of a dataset's size where no pixels are needed (a rehearsal of COCO-sized reading and
    evaluation). Its scenes come from their own random stream, a function of (seed, split, index): the same
    distributions as the rendered images, not the same draws (those go on to the background's pixels).
    """
    rng = np.random.default_rng(np.random.SeedSequence([int(cfg.seed), SPLITS[split], int(index), LABEL_ONLY_STREAM]))
    layout = _layout(rng, cfg)
    people, things = _populate(cfg, rng, None, layout, floor_row(rng, cfg.image_size[1], layout.horizon))
    return Sample(image=None, people=people, things=things)


@dataclass(frozen=True)
class _Layout:
    horizon: float  # image row of the horizon
    ratio: float  # camera-height ratio: a person standing on row g is (g - horizon) / ratio px tall
    light: np.ndarray  # [2] unit vector toward the light, from above


def _layout(rng, cfg: SyntheticConfig) -> _Layout:
    height = cfg.image_size[1]
    horizon = rng.uniform(0.22, 0.6) * height
    ratio = rng.uniform(0.55, 1.15)
    angle = rng.uniform(np.pi * 0.15, np.pi * 0.85)
    return _Layout(horizon, ratio, np.array([np.cos(angle), -np.sin(angle)]))


def _populate(
    cfg: SyntheticConfig, rng, img: np.ndarray | None, layout: _Layout, floor: float
) -> tuple[list[PersonLabel], list[Thing]]:
    """Clutter, people and occluders drawn, placed and painted far to near (into `img` too unless it is None),
    then the people labelled from the owner/part map; returns the annotated people and the non-person objects."""
    width, height = cfg.image_size
    horizon, ratio, light = layout.horizon, layout.ratio, layout.light
    lab = np.zeros((height, width), np.uint16)
    things: list[Thing] = []
    lo, hi = cfg.clutter_per_image
    for _ in range(int(rng.integers(lo, hi + 1))):
        kind = pick(rng, CLUTTER_KINDS)
        if kind == "panel" and floor > 0.2 * height:  # on the wall (or far away)
            ground = rng.uniform(0.15 * height, floor)
            size = float(np.clip((floor - horizon) / ratio, 30.0, 0.4 * height))
        else:  # on the floor, mostly in the distance
            ground = floor + rng.uniform(0.02, 0.75) * (height - floor)
            size = float(np.clip((ground - horizon) / ratio, 20.0, 0.6 * height))
        things.append(draw_thing(img, None, rng, kind, rng.uniform(0, width), ground, size, 0, light))
    people: list[tuple[Person, float, str]] = []
    boxes: list[tuple[float, float, float, float]] = []
    lo, hi = cfg.people_per_image
    for _ in range(int(rng.integers(lo, hi + 1))):
        proto, facing = _sample_person(cfg, rng)
        for _attempt in range(20):
            person, ground = _place(cfg, rng, proto, horizon, floor, ratio, width, height)
            box = person.extent()
            if all(_iou(box, b) < cfg.max_overlap and _cover(box, b) < 0.7 and _cover(b, box) < 0.7 for b in boxes):
                people.append((person, ground, facing))
                boxes.append(box)
                break
    entities = [(ground, 0, i) for i, (_, ground, _) in enumerate(people)]
    occluders = []
    lo, hi = cfg.occluders_per_image
    for j in range(int(rng.integers(lo, hi + 1))):
        if people and rng.random() < 0.75:
            target, tg, _ = people[int(rng.integers(len(people)))]
            ground = tg + rng.uniform(0.01, 0.12) * target.height
            x = 0.5 * (target.extent()[0] + target.extent()[2]) + rng.normal(0, 0.25) * target.height * 0.5
            size = target.height
        else:
            ground = rng.uniform(horizon + 0.05 * height, 1.05 * height)
            x, size = rng.uniform(0, width), float(np.clip((ground - horizon) / ratio, 20.0, 0.7 * height))
        occluders.append((pick(rng, OCCLUDER_KINDS, (0.2, 0.15, 0.2, 0.15, 0.1, 0.05, 0.15)), x, size))
        entities.append((ground, 1, j))
    order = 0
    painted: list[tuple[Person, str, int]] = []
    for ground, what, i in sorted(entities):
        if what == 0:
            person, _, facing = people[i]
            base = 2 + order * NUM_PARTS
            if img is not None:
                _contact_shadow(img, person)
            paint_person(img, lab, person, base, light, cfg.left_shade)
            painted.append((person, facing, base))
            order += 1
        else:
            kind, x, size = occluders[i]
            things.append(draw_thing(img, lab, rng, kind, x, ground, size, OBJECT, light))
    labels = [_label_person(person, facing, lab, base, cfg) for person, facing, base in painted]
    return [p for p in labels if p is not None], things
