"""A posed, dressed person projected into the image and painted part by part, far to near.

Each body part is painted into the image and, with its own code, into the label map: code = base + part index
(PARTS), so the label map says, for every pixel, which person and which of their parts is on top. Bags,
backpacks and seats are painted with the OBJECT code: they hide joints but are not part of the person's mask.
The person's left side is painted darker (`left_shade`), as if lit from their right: that, the face and a watch
on the left wrist make left and right distinguishable, so a horizontal flip changes the picture.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from dataops.synthetic import draw
from dataops.synthetic.appearance import Outfit, shade
from dataops.synthetic.body import SIDES, Body

OBJECT = 1  # label of occluding objects (0 is background; people start at 2)
PARTS = (
    "torso",
    "neck",
    "head",
    "l_upper_arm",
    "l_forearm",
    "l_hand",
    "r_upper_arm",
    "r_forearm",
    "r_hand",
    "l_thigh",
    "l_shin",
    "l_foot",
    "r_thigh",
    "r_shin",
    "r_foot",
    "skirt",
)
PART = {name: i for i, name in enumerate(PARTS)}
NUM_PARTS = len(PARTS)

# Limb radii (body units) at the proximal and distal ends, before the person's build factor.
RADII = {
    "upper_arm": (0.034, 0.028),
    "forearm": (0.027, 0.021),
    "hand": (0.021, 0.017),
    "thigh": (0.058, 0.042),
    "shin": (0.041, 0.028),
    "foot": (0.025, 0.021),
    "neck": (0.032, 0.03),
}
# Torso cross-sections: (height above the pelvis as a fraction of the torso, half-width, half-depth).
SECTIONS = ((-0.1, 0.105, 0.072), (0.35, 0.094, 0.066), (0.7, 0.112, 0.075), (0.9, 0.118, 0.07), (1.0, 0.075, 0.05))
WAIST = 0.3  # where the shirt meets the trousers, as a fraction of the torso


def _unit(v) -> np.ndarray:
    n = float(np.hypot(v[0], v[1]))
    return np.asarray(v, dtype=np.float64) / n if n > 1e-9 else np.array([0.0, -1.0])


@dataclass
class Person:
    body: Body
    outfit: Outfit
    kind: str  # the pose kind
    yaw: float
    height: float  # nominal standing height in pixels (pixels per body unit)
    origin: np.ndarray  # image position of the pelvis
    seat: str | None = None  # "chair", "stool", "mat" or None

    def __post_init__(self) -> None:
        s, o = self.height, self.origin
        self.pts = {k: np.array([o[0] + s * p[0], o[1] - s * p[1]]) for k, p in self.body.points.items()}
        self.depth = {k: -s * float(p[2]) for k, p in self.body.points.items()}

    def vec(self, v3) -> np.ndarray:
        """Project a world direction (body units) into an image offset in pixels."""
        return np.array([self.height * v3[0], -self.height * v3[1]])

    def point(self, p3) -> np.ndarray:
        return self.origin + self.vec(p3)

    def mid(self, a: str, b: str) -> np.ndarray:
        return 0.5 * (self.pts[a] + self.pts[b])

    def extent(self) -> tuple[float, float, float, float]:
        """(x0, y0, x1, y1) of all joints, padded by about a limb's width: the person's full image footprint."""
        pts = np.stack(list(self.pts.values()))
        pad = 0.06 * self.height
        return (pts[:, 0].min() - pad, pts[:, 1].min() - pad, pts[:, 0].max() + pad, pts[:, 1].max() + pad)

    def head_box(self) -> np.ndarray:
        """Axis-aligned box [[x1, y1], [x2, y2]] of the projected head (MPII's head rectangle)."""
        c = self.pts["head"]
        up = _unit(self.vec(self.body.frames["head"][:, 1]))
        a, b = 1.05 * self.body.props["head_w"] * self.height, 1.05 * self.body.props["head_h"] * self.height
        ex = np.hypot(a * up[1], b * up[0])
        ey = np.hypot(a * up[0], b * up[1])
        return np.array([[c[0] - ex, c[1] - ey], [c[0] + ex, c[1] + ey]])

    def facing(self) -> float:
        """z of the head's forward direction: 1 looks at the camera, -1 looks away."""
        return float(self.body.frames["head"][2, 2])


def _limb_radius(person: Person, name: str, extra: float = 1.0) -> tuple[float, float]:
    r0, r1 = RADII[name]
    k = person.height * person.outfit.build * extra
    return max(0.7, r0 * k), max(0.6, r1 * k)


class _Painter:
    """Paints one person: collects (depth, order, callable) for each part, then runs them far to near."""

    def __init__(self, img, lab, person: Person, base: int, light, left_shade: float):
        self.img, self.lab, self.p, self.base, self.light = img, lab, person, base, light
        self.left_shade = left_shade
        self.ops: list[tuple[float, int, object]] = []

    def code(self, part: str) -> int:
        return self.base + PART[part]

    def colour(self, colour, side: str | None = None):
        return shade(colour, self.left_shade) if side == "l" else tuple(colour)

    def add(self, depth: float, fn) -> None:
        self.ops.append((depth, len(self.ops), fn))

    def run(self) -> None:
        for _, _, fn in sorted(self.ops, key=lambda op: (-op[0], op[1])):
            fn()

    # --- parts -------------------------------------------------------------------------------------------
    def limb(self, side: str, seg: str, a: str, b: str, colour, sleeve=None, sleeve_to: float = 1.0) -> None:
        p, part = self.p, f"{side}_{seg}"
        p0, p1 = p.pts[a], p.pts[b]
        r0, r1 = _limb_radius(p, seg)
        draw.shaded_capsule(self.img, self.lab, p0, p1, r0, r1, self.colour(colour, side), self.code(part), self.light)
        if sleeve is not None:
            end = p0 + sleeve_to * (p1 - p0)
            s0, s1 = _limb_radius(p, seg, 1.06)
            s1 = s0 + sleeve_to * (s1 - s0)
            colour = self.colour(sleeve, side)
            draw.shaded_capsule(self.img, self.lab, p0, end, s0, s1, colour, self.code(part), self.light)

    def torso(self) -> None:
        p, o = self.p, self.p.outfit
        frame = p.body.frames["torso"]
        lat, up, fwd = frame[:, 0], frame[:, 1], frame[:, 2]
        length = p.body.props["torso"]
        phi = np.linspace(0, 2 * np.pi, 12, endpoint=False)
        cos, sin = np.cos(phi)[:, None], np.sin(phi)[:, None]
        pts = []
        for level, a, b in SECTIONS:
            a, b = a * o.build, b * o.build
            ring = p.body.points["pelvis"] + up * level * length + cos * a * lat + sin * b * fwd
            pts.append(np.stack([p.point(q) for q in ring]))
        hull = _convex_hull(np.concatenate(pts))
        pelvis2, neck2 = p.pts["pelvis"], p.pts["neck_base"]
        axis = neck2 - pelvis2
        axis_len2 = max(float(axis @ axis), 1.0)
        lat2 = p.vec(lat)
        lat_len = min(1.0, float(np.hypot(*lat2)) / p.height)
        lat_u = _unit(lat2)
        near_left = 1.0 if lat[2] > 0 else -1.0
        perp = _unit([-axis[1], axis[0]]) if axis_len2 > 4 else np.array([1.0, 0.0])
        centre = 0.5 * (pelvis2 + neck2)
        half = max(2.0, float(np.abs((hull - centre) @ perp).max()))
        half_lat = max(2.0, float(np.abs((hull - centre) @ lat_u).max()))
        shirt, shirt2 = np.array(o.shirt, np.float32), np.array(o.shirt2, np.float32)
        pants = np.array(o.pants, np.float32)
        belt = np.array(o.belt, np.float32) if o.belt is not None else pants
        period = max(2.0, o.period * p.height)
        light, ls = self.light, self.left_shade

        def colour_fn(xs, ys):
            dx, dy = xs - centre[0], ys - centre[1]
            t_up = ((xs - pelvis2[0]) * axis[0] + (ys - pelvis2[1]) * axis[1]) / axis_len2
            t_perp = (dx * perp[0] + dy * perp[1]) / half
            t_lat = (dx * lat_u[0] + dy * lat_u[1]) / half_lat
            left = np.clip(0.5 + 0.5 * (t_lat * lat_len + near_left * (1 - lat_len)), 0, 1)
            factor = (1 - (1 - ls) * left) * (1 - 0.28 * t_perp**2) * (1 + 0.1 * (dx * light[0] + dy * light[1]) / half)
            top = t_up > WAIST
            col = np.where(top[..., None], shirt, pants)
            if o.pattern != "plain":
                u = (t_up * np.sqrt(axis_len2)) / period
                v = (dx * perp[0] + dy * perp[1]) / period
                band = {
                    "hstripes": np.floor(u) % 2 == 1,
                    "vstripes": np.floor(v) % 2 == 1,
                    "checks": (np.floor(u) + np.floor(v)) % 2 == 1,
                    "two_tone": t_up > 0.68,
                }[o.pattern]
                col = np.where((band & top)[..., None], shirt2, col)
            if o.belt is not None:
                col = np.where(((t_up > WAIST - 0.06) & (t_up <= WAIST))[..., None], belt, col)
            return col * np.clip(factor, 0.3, 1.3)[..., None]

        draw.textured_fill(self.img, self.lab, hull, self.code("torso"), colour_fn)
        self.torso_details(lat, up, fwd, length)

    def torso_details(self, lat, up, fwd, length) -> None:
        p, o = self.p, self.p.outfit
        s = p.height
        pelvis = p.body.points["pelvis"]
        front = fwd[2] > 0.25
        facing_side = fwd if fwd[2] >= 0 else -fwd

        def surface(level, lateral=0.0):
            b = float(np.interp(level, [q[0] for q in SECTIONS], [q[2] for q in SECTIONS])) * o.build
            return p.point(pelvis + up * level * length + lat * lateral + facing_side * b * 0.95)

        thick = max(1, round(0.012 * s))
        if o.bag_side is not None:  # the strap runs from the other shoulder to the bag's hip
            sgn = 1.0 if o.bag_side == "l" else -1.0
            a, b = surface(0.97, -sgn * 0.07), surface(WAIST, sgn * 0.1)
            draw.line(self.img, a, b, shade(o.bag, 0.7), thick)
        if o.backpack and front:
            for sgn in (1.0, -1.0):
                a, b = surface(0.98, sgn * 0.065), surface(0.5, sgn * 0.085)
                draw.line(self.img, a, b, shade(o.backpack_colour, 0.6), max(1, round(0.018 * s)))
        if not front or s < 40:
            return
        skin = self.p.outfit.skin
        if o.front == "vneck":
            draw.polygon(self.img, None, [surface(1.0, 0.045), surface(1.0, -0.045), surface(0.8)], skin)
        elif o.front == "logo":
            draw.circle(self.img, None, surface(0.68, 0.02), 0.022 * s, o.logo)
        elif o.front == "buttons":
            for level in (0.45, 0.6, 0.75, 0.9):
                draw.circle(self.img, None, surface(level), max(0.6, 0.005 * s), shade(o.shirt, 0.55))
        elif o.front == "zip":
            draw.line(self.img, surface(WAIST), surface(0.98), shade(o.shirt, 0.6), max(1, round(0.006 * s)))

    def head(self) -> None:
        p, o = self.p, self.p.outfit
        props, frame = p.body.props, p.body.frames["head"]
        s, c = p.height, p.pts["head"]
        hw, hh = props["head_w"] * s, props["head_h"] * s
        up = _unit(p.vec(frame[:, 1]))
        fwd2 = p.vec(frame[:, 2]) / s  # projected forward direction, length <= 1
        fz = p.facing()
        angle = float(np.degrees(np.arctan2(up[1], up[0]))) + 90.0
        code = self.code("head")
        skin = self.colour(o.skin)
        hair = {"bald": shade(o.skin, 0.85), "cap": o.hair}.get(o.hair_style, o.hair)
        ears = []
        for side, sgn in SIDES:
            normal = frame @ np.array([sgn, 0.0, -0.15])
            ears.append((normal[2] < -0.25, p.pts[f"{side}_ear"]))
        ear_axes = (0.2 * hw, 0.32 * hh)
        for behind, q in ears:
            if behind:
                draw.ellipse(self.img, self.lab, q, ear_axes, angle, shade(o.skin, 0.85), code)
        if o.hair_style == "long" and fz > 0.3:  # seen from the front: strands beside the face
            across = _unit(p.vec(frame[:, 0]))
            for sgn in (1.0, -1.0):
                a, b = c + sgn * across * 0.75 * hw + up * 0.3 * hh, c + sgn * across * 0.85 * hw - up * 1.3 * hh
                draw.capsule(self.img, self.lab, a, b, 0.32 * hw, 0.26 * hw, hair, code)
        elif o.hair_style == "long":  # from the side or the back: down to the shoulders
            centre = c - up * 0.55 * hh - fwd2 * 0.45 * hw
            draw.ellipse(self.img, self.lab, centre, (1.08 * hw, 1.35 * hh), angle, hair, code)
        draw.ellipse(
            self.img, self.lab, c - fwd2 * 0.2 * hw + up * 0.05 * hh, (1.04 * hw, 1.04 * hh), angle, hair, code
        )
        if fz > -0.3:
            face_c = c + fwd2 * 0.3 * hw - up * 0.12 * hh
            draw.ellipse(self.img, self.lab, face_c, (0.86 * hw, 0.86 * hh), angle, skin, code)
            if hw >= 2.5:
                self.face(frame, hw, fz)
        for behind, q in ears:
            if not behind:
                draw.ellipse(self.img, self.lab, q, ear_axes, angle, skin, code)
        if o.hair_style == "cap":
            draw.ellipse(self.img, self.lab, c + up * 0.1 * hh, (1.08 * hw, 1.0 * hh), angle, o.cap, code, 180, 360)
            visor = c + up * 0.25 * hh + fwd2 * 1.1 * hw
            draw.capsule(self.img, self.lab, c + up * 0.25 * hh, visor, 0.2 * hh, 0.15 * hh, shade(o.cap, 0.8), code)

    def face(self, frame, hw, fz) -> None:
        p = self.p
        dark = (35.0, 30.0, 30.0)
        for side, sgn in SIDES:
            normal = frame @ np.array([sgn * 0.35, 0.1, 1.0])
            if normal[2] > 0.1:
                draw.circle(self.img, None, p.pts[f"{side}_eye"], max(0.6, 0.11 * hw), dark)
        if fz > -0.1:
            draw.circle(self.img, None, p.pts["nose"], max(0.6, 0.16 * hw), shade(p.outfit.skin, 0.82))
        if (frame @ np.array([0.0, -0.3, 1.0]))[2] > 0.25 and hw >= 4:
            m = p.pts["mouth"]
            across = _unit(p.vec(frame[:, 0])) * 0.22 * hw * max(0.2, fz)
            draw.line(self.img, m - across, m + across, (60.0, 50.0, 150.0), max(1, round(0.08 * hw)))

    def hand(self, side: str) -> None:
        p = self.p
        r0, r1 = _limb_radius(p, "hand")
        colour = self.colour(p.outfit.skin, side)
        draw.capsule(
            self.img, self.lab, p.pts[f"{side}_wrist"], p.pts[f"{side}_hand"], r0, r1, colour, self.code(f"{side}_hand")
        )

    def watch(self) -> None:
        p = self.p
        wrist, elbow = p.pts["l_wrist"], p.pts["l_elbow"]
        a = wrist + 0.08 * (elbow - wrist)
        b = wrist + 0.2 * (elbow - wrist)
        r = _limb_radius(p, "forearm", 1.15)[1]
        draw.capsule(self.img, None, a, b, r, r, (40.0, 40.0, 45.0))

    def foot(self, side: str) -> None:
        p = self.p
        r0, r1 = _limb_radius(p, "foot")
        colour = self.colour(getattr(p.outfit, f"{'left' if side == 'l' else 'right'}_shoe"), side)
        heel, toe = p.pts[f"{side}_heel"], p.pts[f"{side}_toe"]
        draw.shaded_capsule(self.img, self.lab, heel, toe, r0, r1, colour, self.code(f"{side}_foot"), self.light)

    def skirt(self) -> None:
        p, o = self.p, self.p.outfit
        root = p.body.frames["root"]
        lat, fwd = root[:, 0], root[:, 2]
        pts = []
        for side, _ in SIDES:
            hip, knee = p.body.points[f"{side}_hip"], p.body.points[f"{side}_knee"]
            hem = hip + 0.62 * (knee - hip)
            for q, r in ((hip, 0.07), (hem, 0.075)):
                for phi in np.linspace(0, 2 * np.pi, 8, endpoint=False):
                    pts.append(p.point(q + r * o.build * (np.cos(phi) * lat + np.sin(phi) * fwd)))
        pts.append(p.point(p.body.points["pelvis"] + root[:, 1] * 0.06))
        hull = _convex_hull(np.stack(pts))
        draw.polygon(self.img, self.lab, hull, o.pants, self.code("skirt"))
        hem_l = p.point(p.body.points["l_hip"] + 0.62 * (p.body.points["l_knee"] - p.body.points["l_hip"]))
        hem_r = p.point(p.body.points["r_hip"] + 0.62 * (p.body.points["r_knee"] - p.body.points["r_hip"]))
        draw.line(self.img, hem_l, hem_r, shade(o.pants, 0.7), max(1, round(0.006 * p.height)))

    def box(self, centre, half, frame, colour, code) -> None:
        """A cuboid (bag, backpack, seat part): its projected hull, shaded toward the light."""
        p = self.p
        corners = np.array([[x, y, z] for x in (-1, 1) for y in (-1, 1) for z in (-1, 1)], dtype=np.float64)
        pts = np.stack([p.point(centre + frame @ (c * half)) for c in corners])
        hull = _convex_hull(pts)
        draw.polygon(self.img, self.lab, hull, colour, code)
        c2 = pts.mean(axis=0)
        radius = float(np.abs(hull - c2).max())
        draw.polygon(self.img, None, c2 + 0.6 * (hull - c2) + self.light * 0.15 * radius, shade(colour, 1.12))

    def neck(self) -> None:
        p = self.p
        r0, r1 = _limb_radius(p, "neck")
        a, b = p.pts["neck_base"], p.pts["upper_neck"]
        draw.shaded_capsule(self.img, self.lab, a, b, r0, r1, self.colour(p.outfit.skin), self.code("neck"), self.light)


def _convex_hull(points: np.ndarray) -> np.ndarray:
    hull = cv2.convexHull(np.asarray(points, dtype=np.float32))
    return hull.reshape(-1, 2).astype(np.float64)


def paint_person(img, lab, person: Person, base: int, light, left_shade: float) -> None:
    """Paint one person (and their bag, backpack, seat) far to near into img and lab."""
    pt = _Painter(img, lab, person, base, light, left_shade)
    p, o, d = person, person.outfit, person.depth
    body = p.body
    torso_depth = 0.5 * (d["pelvis"] + d["neck_base"]) + 0.07 * p.height
    head_depth = d["head"]
    pt.add(torso_depth, pt.torso)
    pt.add(0.5 * (torso_depth + head_depth) - 0.001, pt.neck)
    pt.add(head_depth, pt.head)
    for side, _ in SIDES:
        sleeve = getattr(o, "left_sleeve" if side == "l" else "right_sleeve")
        skin = o.skin
        ua, fa = (skin, skin) if o.sleeves != "long" else (sleeve, sleeve)
        ua_sleeve = (sleeve, 0.55) if o.sleeves == "short" else (None, 1.0)

        def upper_arm(side=side, ua=ua, ua_sleeve=ua_sleeve):
            pt.limb(side, "upper_arm", f"{side}_shoulder", f"{side}_elbow", ua, ua_sleeve[0], ua_sleeve[1])

        def forearm(side=side, fa=fa):
            pt.limb(side, "forearm", f"{side}_elbow", f"{side}_wrist", fa)
            if side == "l" and o.watch:
                pt.watch()

        pt.add(0.5 * (d[f"{side}_shoulder"] + d[f"{side}_elbow"]), upper_arm)
        pt.add(0.5 * (d[f"{side}_elbow"] + d[f"{side}_wrist"]), forearm)
        pt.add(0.5 * (d[f"{side}_wrist"] + d[f"{side}_hand"]) - 0.001, lambda side=side: pt.hand(side))
        # trousers: both segments in the trouser colour; shorts: a short "sleeve" on a bare thigh; skirt: bare legs
        thigh_c = o.pants if o.legwear == "trousers" else skin
        shin_c = o.pants if o.legwear == "trousers" else skin
        short = (o.pants, 0.7) if o.legwear == "shorts" else (None, 1.0)

        def thigh(side=side, thigh_c=thigh_c, short=short):
            pt.limb(side, "thigh", f"{side}_hip", f"{side}_knee", thigh_c, short[0], short[1])

        pt.add(0.5 * (d[f"{side}_hip"] + d[f"{side}_knee"]), thigh)
        pt.add(
            0.5 * (d[f"{side}_knee"] + d[f"{side}_ankle"]),
            lambda side=side, shin_c=shin_c: pt.limb(side, "shin", f"{side}_knee", f"{side}_ankle", shin_c),
        )
        pt.add(0.5 * (d[f"{side}_heel"] + d[f"{side}_toe"]), lambda side=side: pt.foot(side))
    if o.legwear == "skirt":
        thighs = min(0.5 * (d[f"{s}_hip"] + d[f"{s}_knee"]) for s in ("l", "r"))
        pt.add(min(thighs, d["pelvis"]) - 0.01 * p.height, pt.skirt)
    torso = body.frames["torso"]
    if o.backpack:
        centre = body.points["pelvis"] + torso @ np.array([0.0, 0.6 * body.props["torso"], -0.075 * o.build - 0.045])
        half = np.array([0.07, 0.1, 0.045]) * o.build
        pt.add(-p.height * float(centre[2]), lambda: pt.box(centre, half, torso, o.backpack_colour, OBJECT))
    if o.bag_side is not None:
        sgn = 1.0 if o.bag_side == "l" else -1.0
        root = body.frames["root"]
        centre = body.points[f"{o.bag_side}_hip"] + root @ np.array([sgn * 0.075 * o.build, 0.03, 0.01])
        half = np.array([0.025, 0.055, 0.075])
        pt.add(-p.height * float(centre[2]), lambda: pt.box(centre, half, root, o.bag, OBJECT))
    if p.seat is not None:
        pt.add(np.inf, lambda: paint_seat(pt))
    pt.run()


def paint_seat(pt: _Painter) -> None:
    """A chair (facing the camera), a stool (backless), or a mat under a lying person; painted before the person."""
    p = pt.p
    root = p.body.frames["root"]
    pts = p.body.points
    colour = p.outfit.bag  # any muted colour of this person's palette
    if p.seat == "mat":
        half = np.array([0.2, 0.62, 0.01])
        centre = pts["pelvis"] + root @ np.array([0.0, 0.2, -0.09])
        pt.box(centre, half, root, shade(p.outfit.logo, 0.9), OBJECT)
        return
    floor = min(float((root.T @ pts[f"{s}_heel"])[1]) for s in ("l", "r")) - 0.03
    seat_y = -0.06 - 0.05 * (p.outfit.build - 1)
    wood = shade(colour, 0.9)
    if p.seat == "chair":
        back = np.array([0.0, seat_y + 0.2, -0.16])
        pt.box(pts["pelvis"] + root @ back, np.array([0.19, 0.2, 0.015]), root, shade(wood, 0.85), OBJECT)
    for x in (-0.17, 0.17):
        for z in (-0.14, 0.16):
            a = pt.p.point(pts["pelvis"] + root @ np.array([x, seat_y, z]))
            b = pt.p.point(pts["pelvis"] + root @ np.array([x, floor, z]))
            draw.capsule(pt.img, pt.lab, a, b, 0.012 * p.height, 0.012 * p.height, shade(wood, 0.7), OBJECT)
    centre = pts["pelvis"] + root @ np.array([0.0, seat_y - 0.02, 0.01])
    pt.box(centre, np.array([0.2, 0.02, 0.17]), root, wood, OBJECT)
