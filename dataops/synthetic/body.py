"""Articulated 3D body of the synthetic people: proportions, joint-angle limits, poses, forward kinematics.

Frames (right-handed, lengths in units of standing height):
    body   x = the person's left, y = up, z = the way the person faces;
    world  X = image right, Y = up, Z = toward the camera; the projection is orthographic (u = X, v = -Y).
A person with yaw 0 faces the camera (body = world), so their left side is on the image's right, as in a photo.

Joint angles are in degrees and clipped to LIMITS (about the normal human ranges of motion). Shoulder and hip:
flexion (raise forward), abduction (raise sideways, outward only), twist (rotation about the limb); elbow and
knee: flexion, one way only (elbow forward, knee backward); trunk: lean (forward), side bend, twist; head: nod
(down), turn, roll.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dataops.synthetic.sampling import pick

# Mean segment lengths and widths (fractions of the standing height); each person jitters them by +-8%.
PROPORTIONS = {
    "torso": 0.29,  # pelvis (hip-joint level) to neck base
    "neck": 0.095,  # neck base to head centre
    "shoulder": 0.115,  # half the distance between the shoulder joints
    "hip": 0.085,  # half the distance between the hip joints
    "upper_arm": 0.17,
    "forearm": 0.155,
    "hand": 0.075,
    "thigh": 0.245,
    "shin": 0.245,
    "foot": 0.13,
    "head_w": 0.052,  # head half-width
    "head_h": 0.066,  # head half-height
}

LIMITS = {
    "lean": (-20.0, 80.0),
    "side_bend": (-25.0, 25.0),
    "twist": (-35.0, 35.0),
    "nod": (-35.0, 45.0),
    "turn": (-70.0, 70.0),
    "roll": (-25.0, 25.0),
    "sh_flex": (-60.0, 180.0),
    "sh_abd": (-10.0, 180.0),
    "sh_twist": (-90.0, 90.0),
    "elbow": (0.0, 150.0),
    "hip_flex": (-30.0, 130.0),
    "hip_abd": (-15.0, 60.0),
    "hip_twist": (-40.0, 40.0),
    "knee": (0.0, 155.0),
}

POSES = ("stand", "walk", "arms_raised", "sit", "crouch", "lie", "mixed")
SIDES = (("l", 1.0), ("r", -1.0))


def rot_x(deg: float) -> np.ndarray:
    c, s = np.cos(np.deg2rad(deg)), np.sin(np.deg2rad(deg))
    return np.array([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])


def rot_y(deg: float) -> np.ndarray:
    c, s = np.cos(np.deg2rad(deg)), np.sin(np.deg2rad(deg))
    return np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])


def rot_z(deg: float) -> np.ndarray:
    c, s = np.cos(np.deg2rad(deg)), np.sin(np.deg2rad(deg))
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


# Lying on the back, before turning on the floor: body up -> world X, body forward -> world Y (face up).
_LIE_ON_BACK = np.array([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0]])


def sample_proportions(rng: np.random.Generator) -> dict[str, float]:
    jitter = rng.uniform(0.92, 1.08, size=len(PROPORTIONS))
    return {k: v * j for (k, v), j in zip(PROPORTIONS.items(), jitter)}


def _clip(angles: dict[str, float]) -> dict[str, float]:
    out = {}
    for key, value in angles.items():
        lo, hi = LIMITS[key[2:] if key[:2] in ("l_", "r_") else key]
        out[key] = float(np.clip(value, lo, hi))
    return out


def _relaxed_arm(rng, a, side):
    a[f"{side}_sh_flex"] = rng.normal(0, 10)
    a[f"{side}_sh_abd"] = rng.uniform(3, 18)
    a[f"{side}_sh_twist"] = rng.uniform(-20, 30)
    a[f"{side}_elbow"] = rng.uniform(0, 35)


def _standing_leg(rng, a, side, spread=8.0):
    a[f"{side}_hip_flex"] = rng.normal(0, 4)
    a[f"{side}_hip_abd"] = rng.uniform(0, spread)
    a[f"{side}_hip_twist"] = rng.uniform(-5, 20)
    a[f"{side}_knee"] = rng.uniform(0, 8)


def _raised_arm(rng, a, side):
    if rng.random() < 0.5:  # forward and up
        a[f"{side}_sh_flex"], a[f"{side}_sh_abd"] = rng.uniform(80, 178), rng.uniform(0, 30)
    else:  # sideways and up
        a[f"{side}_sh_flex"], a[f"{side}_sh_abd"] = rng.uniform(-10, 30), rng.uniform(80, 175)
    a[f"{side}_sh_twist"] = rng.uniform(-30, 30)
    a[f"{side}_elbow"] = rng.uniform(0, 60) if rng.random() < 0.7 else rng.uniform(60, 120)


def _arm_gesture(rng, a, side):
    """One arm of a 'mixed' pose: relaxed, akimbo, raised, pointing, hand to head, or across the chest."""
    kind = pick(rng, ("relaxed", "akimbo", "raised", "point", "head", "across"))
    if kind == "relaxed":
        _relaxed_arm(rng, a, side)
    elif kind == "raised":
        _raised_arm(rng, a, side)
    elif kind == "akimbo":
        a.update({f"{side}_sh_flex": rng.uniform(-15, 5), f"{side}_sh_abd": rng.uniform(35, 55)})
        a.update({f"{side}_sh_twist": rng.uniform(-90, -65), f"{side}_elbow": rng.uniform(85, 115)})
    elif kind == "point":
        a.update({f"{side}_sh_flex": rng.uniform(60, 100), f"{side}_sh_abd": rng.uniform(0, 60)})
        a.update({f"{side}_sh_twist": rng.uniform(-20, 20), f"{side}_elbow": rng.uniform(0, 15)})
    elif kind == "head":
        a.update({f"{side}_sh_flex": rng.uniform(90, 130), f"{side}_sh_abd": rng.uniform(30, 70)})
        a.update({f"{side}_sh_twist": rng.uniform(-60, -20), f"{side}_elbow": rng.uniform(125, 150)})
    else:
        a.update({f"{side}_sh_flex": rng.uniform(25, 55), f"{side}_sh_abd": rng.uniform(0, 15)})
        a.update({f"{side}_sh_twist": rng.uniform(-75, -45), f"{side}_elbow": rng.uniform(95, 135)})


def sample_pose(kind: str, rng: np.random.Generator) -> dict[str, float]:
    """Joint angles (degrees, clipped to LIMITS) of one pose of the given kind (one of POSES)."""
    a = {
        "lean": rng.normal(0, 4),
        "side_bend": rng.normal(0, 4),
        "twist": rng.normal(0, 6),
        "nod": rng.normal(3, 10),
        "turn": rng.normal(0, 20),
        "roll": rng.normal(0, 6),
    }
    for side, _ in SIDES:
        _relaxed_arm(rng, a, side)
        _standing_leg(rng, a, side)
    if kind == "walk":
        phase, amp = rng.uniform(0, 2 * np.pi), rng.uniform(15, 32)
        swing = np.sin(phase)
        for side, sgn in SIDES:
            a[f"{side}_hip_flex"] = sgn * amp * swing + 4
            a[f"{side}_knee"] = 6 + 45 * max(0.0, np.sin(phase + sgn * 1.2 + np.pi / 2)) ** 2
            a[f"{side}_sh_flex"] = -sgn * 0.8 * amp * swing
            a[f"{side}_elbow"] = rng.uniform(10, 45)
        a["lean"] = rng.uniform(0, 8)
    elif kind == "arms_raised":
        which = pick(rng, ("both", "l", "r"), (0.6, 0.2, 0.2))
        for side, _ in SIDES:
            if which in ("both", side):
                _raised_arm(rng, a, side)
            _standing_leg(rng, a, side, spread=20.0)
        a["nod"] = rng.normal(-8, 10)
    elif kind == "sit":
        for side, _ in SIDES:
            flex = rng.uniform(75, 105)
            a.update({f"{side}_hip_flex": flex, f"{side}_hip_abd": rng.uniform(2, 15)})
            a.update({f"{side}_hip_twist": rng.uniform(-10, 20), f"{side}_knee": flex + rng.uniform(-15, 15)})
            a.update({f"{side}_sh_flex": rng.uniform(10, 45), f"{side}_elbow": rng.uniform(30, 90)})
            if rng.random() < 0.25:
                _arm_gesture(rng, a, side)
        a["lean"] = rng.uniform(-10, 15)
    elif kind == "crouch":
        for side, _ in SIDES:
            a.update({f"{side}_hip_flex": rng.uniform(70, 125), f"{side}_hip_abd": rng.uniform(10, 35)})
            a.update({f"{side}_knee": rng.uniform(100, 150), f"{side}_hip_twist": rng.uniform(0, 25)})
            a.update({f"{side}_sh_flex": rng.uniform(20, 80), f"{side}_elbow": rng.uniform(20, 100)})
        a["lean"] = rng.uniform(20, 55)
        a["nod"] = rng.uniform(-30, 0)
    elif kind == "lie":
        for side, _ in SIDES:
            if rng.random() < 0.3:
                a.update({f"{side}_hip_flex": rng.uniform(20, 60), f"{side}_knee": rng.uniform(40, 100)})
            if rng.random() < 0.3:
                a.update({f"{side}_sh_flex": rng.uniform(120, 178), f"{side}_elbow": rng.uniform(0, 90)})
        a["nod"] = rng.normal(0, 8)
    elif kind == "mixed":
        for side, _ in SIDES:
            _arm_gesture(rng, a, side)
        if rng.random() < 0.4:  # a bent or lifted leg
            side = "l" if rng.random() < 0.5 else "r"
            a.update({f"{side}_hip_flex": rng.uniform(10, 80), f"{side}_knee": rng.uniform(20, 110)})
        a["lean"], a["twist"] = rng.uniform(-8, 25), rng.normal(0, 15)
    return _clip(a)


def root_rotation(kind: str, yaw: float, rng: np.random.Generator) -> np.ndarray:
    """Body -> world rotation: yaw about the vertical, a small roll, and the camera's elevation.

    Lying people lie on the back (or front, or side) along the image's horizontal, turned by up to 40
    degrees on the floor, and are seen from 15-50 degrees above; upright people from -5 to 15 degrees.
    """
    if kind == "lie":
        base = _LIE_ON_BACK
        facing = pick(rng, ("back", "front", "side"), (0.55, 0.2, 0.25))
        if facing == "front":
            base = rot_x(180.0) @ base
        elif facing == "side":
            base = rot_x(pick(rng, (-70.0, 70.0))) @ base
        if rng.random() < 0.5:
            base = rot_y(180.0) @ base  # head to the left
        return rot_x(rng.uniform(15, 50)) @ rot_y(rng.uniform(-40, 40)) @ base
    return rot_x(rng.uniform(-5, 15)) @ rot_z(rng.normal(0, 3)) @ rot_y(yaw)


@dataclass
class Body:
    """A posed body in world coordinates (standing-height units, pelvis at the origin)."""

    points: dict[str, np.ndarray]  # name -> (3,)
    frames: dict[str, np.ndarray]  # "root", "torso", "head" and each limb segment -> 3x3 rotation
    props: dict[str, float]
    kind: str


def forward_kinematics(angles: dict[str, float], props: dict[str, float], root: np.ndarray, kind: str) -> Body:
    """Joint positions of a posed body. Feet stay flat (parallel to the floor) unless the person lies."""
    p: dict[str, np.ndarray] = {}
    f: dict[str, np.ndarray] = {"root": root}
    v = np.array
    p["pelvis"] = np.zeros(3)
    r_torso = root @ rot_x(angles["lean"]) @ rot_z(angles["side_bend"]) @ rot_y(angles["twist"])
    f["torso"] = r_torso
    neck = r_torso @ v([0.0, props["torso"], 0.0])
    p["neck_base"] = neck
    r_head = r_torso @ rot_x(angles["nod"]) @ rot_y(angles["turn"]) @ rot_z(angles["roll"])
    f["head"] = r_head
    head = neck + r_torso @ rot_x(0.5 * angles["nod"]) @ v([0.0, props["neck"], 0.012])
    p["head"] = head
    hw, hh = props["head_w"], props["head_h"]
    p["head_top"] = head + r_head @ v([0.0, hh * 1.03, -0.005])
    p["upper_neck"] = head + r_head @ v([0.0, -0.8 * hh, -0.012])
    p["nose"] = head + r_head @ v([0.0, -0.18 * hh, 1.1 * hw])
    p["mouth"] = head + r_head @ v([0.0, -0.5 * hh, 0.93 * hw])
    for side, sgn in SIDES:
        p[f"{side}_eye"] = head + r_head @ v([sgn * 0.42 * hw, 0.15 * hh, 0.88 * hw])
        p[f"{side}_ear"] = head + r_head @ v([sgn * 1.02 * hw, -0.05 * hh, -0.1 * hw])
        shoulder = neck + r_torso @ v([sgn * props["shoulder"], -0.025, -0.008])
        r_ua = (
            r_torso
            @ rot_x(-angles[f"{side}_sh_flex"])
            @ rot_z(sgn * angles[f"{side}_sh_abd"])
            @ rot_y(sgn * angles[f"{side}_sh_twist"])
        )
        elbow = shoulder + r_ua @ v([0.0, -props["upper_arm"], 0.0])
        r_fa = r_ua @ rot_x(-angles[f"{side}_elbow"])
        wrist = elbow + r_fa @ v([0.0, -props["forearm"], 0.0])
        p[f"{side}_shoulder"], p[f"{side}_elbow"], p[f"{side}_wrist"] = shoulder, elbow, wrist
        p[f"{side}_hand"] = wrist + r_fa @ rot_x(-12.0) @ v([0.0, -props["hand"], 0.0])
        f[f"{side}_upper_arm"], f[f"{side}_forearm"] = r_ua, r_fa
        hip = root @ v([sgn * props["hip"], -0.01, 0.0])
        r_th = (
            root
            @ rot_x(-angles[f"{side}_hip_flex"])
            @ rot_z(sgn * angles[f"{side}_hip_abd"])
            @ rot_y(sgn * angles[f"{side}_hip_twist"])
        )
        knee = hip + r_th @ v([0.0, -props["thigh"], 0.0])
        r_sh = r_th @ rot_x(angles[f"{side}_knee"])
        ankle = knee + r_sh @ v([0.0, -props["shin"], 0.0])
        if kind == "lie":
            forward = r_sh @ v([0.0, -0.3, 1.0])
            down = r_sh @ v([0.0, -1.0, 0.0])
        else:  # the foot points where the shin faces, flattened onto the floor of the root frame
            local = root.T @ (r_sh @ v([0.0, 0.0, 1.0]))
            local[1] = 0.0
            norm = float(np.linalg.norm(local))
            local = local / norm if norm > 1e-6 else v([0.0, 0.0, 1.0])
            forward, down = root @ local, root @ v([0.0, -1.0, 0.0])
        forward = forward / np.linalg.norm(forward)
        p[f"{side}_hip"], p[f"{side}_knee"], p[f"{side}_ankle"] = hip, knee, ankle
        p[f"{side}_toe"] = ankle + 0.035 * down + (props["foot"] * 0.72) * forward
        p[f"{side}_heel"] = ankle + 0.035 * down - (props["foot"] * 0.2) * forward
        f[f"{side}_thigh"], f[f"{side}_shin"] = r_th, r_sh
    return Body(points=p, frames=f, props=props, kind=kind)
