"""Backgrounds (rooms, streets and fields, abstract textures), background clutter and occluding objects.

Scenes have a horizon and a ground plane: an object standing at image row `ground` is drawn at the size a
person would have there, `(ground - horizon) / camera_ratio` pixels tall (see scene.py). Clutter is painted
before the people and is background in the label map; occluders are painted between the people, far to near,
with the OBJECT label. Both return their image boxes, which the fake detector uses for false positives.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from dataops.synthetic import draw
from dataops.synthetic.appearance import SKIN_RGB, random_colour, shade
from dataops.synthetic.sampling import pick


@dataclass
class Thing:
    """A non-person object in the image: its box [x0, y0, x1, y1] and kind; `limb_like` ones mimic body parts."""

    box: tuple[float, float, float, float]
    kind: str
    limb_like: bool = False


def _smooth_noise(rng, height, width, cells, channels=1) -> np.ndarray:
    grid = rng.random((max(2, cells * height // width), cells, channels)).astype(np.float32)
    return cv2.resize(grid, (width, height), interpolation=cv2.INTER_CUBIC).reshape(height, width, channels)


def _texture(rng, height, width, cells, colour: float = 0.25) -> np.ndarray:
    """Smooth noise in [0, 1], mostly brightness with a little colour."""
    shape = (max(2, cells * height // width), cells)
    grid = rng.random((*shape, 1)) * (1 - colour) + rng.random((*shape, 3)) * colour
    return cv2.resize(grid.astype(np.float32), (width, height), interpolation=cv2.INTER_CUBIC)


def _gradient(height, width, top, bottom) -> np.ndarray:
    t = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None, None]
    column = np.asarray(top, np.float32) * (1 - t) + np.asarray(bottom, np.float32) * t
    return cv2.resize(column, (width, height), interpolation=cv2.INTER_NEAREST)


def _wall(rng, h, w) -> np.ndarray:
    base = np.array(random_colour(rng, muted=0.6), np.float32) * 0.6 + 80
    img = _gradient(h, w, base * rng.uniform(1.0, 1.2), base * rng.uniform(0.75, 0.95))
    kind = pick(rng, ("plain", "stripes", "tiles", "bricks"))
    if kind == "stripes":
        period = rng.uniform(8, 30)
        band = (np.arange(w) // period % 2 == 1)[None, :, None]
        img = np.where(band, img * rng.uniform(0.85, 0.95), img)
    elif kind in ("tiles", "bricks"):
        cell_h = rng.uniform(6, 20)
        cell_w = cell_h * (2.2 if kind == "bricks" else 1.0)
        rows = (np.arange(h)[:, None] // cell_h).astype(int)
        offset = (rows % 2) * cell_w * 0.5 if kind == "bricks" else 0.0
        x = (np.arange(w)[None, :] + offset) % cell_w
        y = np.arange(h)[:, None] % cell_h
        grout = (x < 1.2) | (y < 1.2)
        img = np.where(grout[..., None], img * 0.7, img)
    return img * (0.92 + 0.16 * _texture(rng, h, w, 12))


def _sky(rng, h, w) -> np.ndarray:
    kind = pick(rng, ("blue", "overcast", "sunset"), (0.55, 0.3, 0.15))
    top, bottom = {
        "blue": ((230, 150, 90), (250, 225, 200)),
        "overcast": ((185, 175, 170), (225, 222, 220)),
        "sunset": ((160, 90, 80), (120, 180, 250)),
    }[kind]
    img = _gradient(h, w, np.array(top) * rng.uniform(0.85, 1.05), np.array(bottom) * rng.uniform(0.9, 1.02))
    clouds = np.zeros((h, w), np.float32)
    for _ in range(rng.integers(0, 6)):
        c = (float(rng.uniform(0, w)), float(rng.uniform(0, h * 0.8)))
        cv2.ellipse(
            clouds, (int(c[0]), int(c[1])), (int(rng.uniform(10, 60)), int(rng.uniform(4, 15))), 0, 0, 360, 1, -1
        )
    clouds = cv2.GaussianBlur(clouds, (0, 0), 4)[..., None]
    return img * (1 - 0.6 * clouds) + 245 * 0.6 * clouds


def _ground(rng, h, w, outdoor: bool) -> np.ndarray:
    if outdoor:
        kind = pick(rng, ("grass", "asphalt", "sand", "pavement"))
        base = {"grass": (60, 140, 70), "asphalt": (95, 95, 100), "sand": (150, 190, 215), "pavement": (160, 165, 170)}[
            kind
        ]
    else:
        kind = pick(rng, ("wood", "tiles", "carpet"))
        base = random_colour(rng, muted=0.5) if kind != "wood" else (60, 105, 150)
    base = np.array(base, np.float32) * rng.uniform(0.8, 1.15, size=3).astype(np.float32)
    img = _gradient(h, w, base * 0.8, base * 1.1)
    grain = 4 if kind in ("wood", "asphalt") else 40
    return img * (0.85 + 0.3 * _smooth_noise(rng, h, w, grain)), kind


def _perspective_lines(img, rng, vx, horizon, top, kind) -> None:
    """Floor seams converging on (vx, horizon) below row `top`: planks, tiles or paving."""
    h, w = img.shape[:2]
    colour = tuple(float(c) for c in img[min(h - 1, int(top) + 2), w // 2] * 0.7)
    depth = h - horizon
    if kind in ("wood", "tiles", "pavement"):
        step = rng.uniform(0.08, 0.2) * w
        for k in range(-30, 31):
            xb = vx + k * step
            t = (top - horizon) / depth
            cv2.line(img, (int(vx + (xb - vx) * t), int(top)), (int(xb), h), colour, 1, cv2.LINE_AA)
    if kind in ("tiles", "pavement"):
        rows = int(rng.integers(5, 14))
        for j in range(1, rows + 1):
            y = horizon + depth * (j / rows) ** 2  # rows crowd toward the horizon
            if top < y < h:
                cv2.line(img, (0, int(y)), (w, int(y)), colour, 1, cv2.LINE_AA)


def _skyline(img, rng, horizon) -> None:
    h, w = img.shape[:2]
    kind = pick(rng, ("buildings", "hills", "trees", "none"), (0.4, 0.25, 0.25, 0.1))
    if kind == "buildings":
        x = rng.uniform(-20, 0)
        while x < w:
            bw, bh = rng.uniform(0.05, 0.2) * w, rng.uniform(0.05, 0.4) * h
            col = np.array(random_colour(rng, muted=0.7)) * 0.5 + 70
            cv2.rectangle(img, (int(x), int(horizon - bh)), (int(x + bw), int(horizon)), col.tolist(), -1)
            win = (col * 0.6).tolist()
            for wy in np.arange(horizon - bh + 4, horizon - 4, 8):
                for wx in np.arange(x + 3, x + bw - 4, 7):
                    cv2.rectangle(img, (int(wx), int(wy)), (int(wx + 3), int(wy + 3)), win, -1)
            x += bw + rng.uniform(0, 10)
    elif kind == "hills":
        xs = np.linspace(-10, w + 10, 12)
        ys = horizon - np.abs(_smooth_noise(rng, 1, 12, 4, 1).ravel()) * rng.uniform(0.05, 0.25) * h
        col = np.array((90, 130, 100), np.float64) * rng.uniform(0.7, 1.2)
        poly = np.concatenate([np.stack([xs, ys], 1), [[w + 10, horizon], [-10, horizon]]]).astype(np.int32)
        cv2.fillPoly(img, [poly], col.tolist(), cv2.LINE_AA)
    elif kind == "trees":
        for x in np.arange(rng.uniform(-10, 5), w, rng.uniform(6, 14)):
            r = rng.uniform(5, 14)
            col = (np.array((50, 110, 60)) * rng.uniform(0.6, 1.2)).tolist()
            cv2.circle(img, (int(x), int(horizon - r * rng.uniform(0.5, 1.5))), int(r), col, -1, cv2.LINE_AA)


def scene_style(rng: np.random.Generator, height: int, horizon: float) -> tuple[str, int | None]:
    """The background's first draws: its style ("indoor", "outdoor", "abstract") and, but for an abstract one, the
    row of the half-resolution background where the ground starts (a room's floor is below the horizon)."""
    h, hz = height // 2, horizon / 2
    style = pick(rng, ("indoor", "outdoor", "abstract"), (0.4, 0.45, 0.15))
    if style == "abstract":
        return style, None
    return style, int(np.clip(hz if style == "outdoor" else hz + rng.uniform(0.03, 0.25) * h, 2, h - 2))


def floor_row(rng: np.random.Generator, height: int, horizon: float) -> float:
    """The first image row of a scene's floor, as `background` draws it, without painting anything: the layout
    of a label-only scene (its later draws are the background's pixels, which such a scene does not have)."""
    _, split = scene_style(rng, height, horizon)
    return horizon if split is None else 2.0 * split


def background(rng: np.random.Generator, width: int, height: int, horizon: float) -> tuple[np.ndarray, float]:
    """A BGR uint8 background (a room, an outdoor scene or an abstract texture, softly out of focus), and the
    first row of its floor (rooms: where the wall ends; else the horizon)."""
    w, h = width // 2, height // 2
    hz = horizon / 2
    style, split = scene_style(rng, height, horizon)
    floor = horizon if split is None else 2.0 * split
    if style == "abstract":
        a, b = np.array(random_colour(rng), np.float32), np.array(random_colour(rng), np.float32)
        t = _smooth_noise(rng, h, w, int(rng.integers(2, 8)), 1)
        img = a * t + b * (1 - t)
        if rng.random() < 0.5:
            period, angle = rng.uniform(6, 40), rng.uniform(0, np.pi)
            yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
            u = xx * np.cos(angle) + yy * np.sin(angle)
            img = img * np.where((u // period % 2 == 0)[..., None], 1.0, rng.uniform(0.7, 0.9))
    else:
        outdoor = style == "outdoor"
        top = _sky(rng, split, w) if outdoor else _wall(rng, split, w)
        ground, kind = _ground(rng, h - split, w, outdoor)
        img = np.concatenate([top, ground], axis=0)
        if outdoor:
            _skyline(img, rng, split)
        _perspective_lines(img, rng, rng.uniform(0.2, 0.8) * w, hz, split, kind)
        if not outdoor:  # skirting board
            cv2.line(img, (0, split), (w, split), (img[split - 2, w // 2] * 0.6).tolist(), 2)
    return cv2.resize(cv2.convertScaleAbs(img), (width, height), interpolation=cv2.INTER_LINEAR), floor


# --- objects ---------------------------------------------------------------------------------------------------


def _box3d(img, lab, x, bottom, w, hgt, depth, colour, code, light) -> tuple:
    """A cuboid seen slightly from above: front face, top face and one side face."""
    dx = depth * (0.5 if light[0] < 0 else -0.5)
    dy = -depth * 0.4
    front = [(x, bottom - hgt), (x + w, bottom - hgt), (x + w, bottom), (x, bottom)]
    top = [(x, bottom - hgt), (x + w, bottom - hgt), (x + w + dx, bottom - hgt + dy), (x + dx, bottom - hgt + dy)]
    sx = x + w if dx > 0 else x
    side = [(sx, bottom - hgt), (sx + dx, bottom - hgt + dy), (sx + dx, bottom + dy), (sx, bottom)]
    draw.polygon(img, lab, side, shade(colour, 0.7), code)
    draw.polygon(img, lab, top, shade(colour, 1.2), code)
    draw.polygon(img, lab, front, colour, code)
    xs = [p[0] for p in front + top + side]
    ys = [p[1] for p in front + top + side]
    return (min(xs), min(ys), max(xs), max(ys))


def _limbs(img, lab, rng, x, y, size, code, light) -> tuple:
    """A chain of 2-3 tapered, shaded capsules with skin or cloth colours: a limb-like distractor."""
    colour = shade(SKIN_RGB[rng.integers(len(SKIN_RGB))][::-1], rng.uniform(0.8, 1.05))
    if rng.random() < 0.5:
        colour = random_colour(rng)
    p = np.array([x, y], np.float64)
    angle = rng.uniform(0, 2 * np.pi)
    r = size * rng.uniform(0.03, 0.06)
    pts = [p]
    for _ in range(int(rng.integers(2, 4))):
        q = p + size * rng.uniform(0.15, 0.26) * np.array([np.cos(angle), np.sin(angle)])
        draw.shaded_capsule(img, lab, p, q, r, r * 0.8, colour, code, light)
        p, r, angle = q, r * 0.8, angle + rng.uniform(-1.4, 1.4)
        pts.append(p)
    pts = np.stack(pts)
    pad = size * 0.06
    return (pts[:, 0].min() - pad, pts[:, 1].min() - pad, pts[:, 0].max() + pad, pts[:, 1].max() + pad)


def draw_thing(img, lab, rng, kind: str, x: float, ground: float, size: float, code: int, light) -> Thing:
    """Draw one object standing at (x, ground), `size` = a person's height there, with label `code`."""
    colour = random_colour(rng, muted=0.5)
    if kind == "limbs":
        box = _limbs(img, lab, rng, x, ground - size * rng.uniform(0.1, 0.8), size, code, light)
        return Thing(box, kind, limb_like=True)
    if kind == "crate":
        w = size * rng.uniform(0.15, 0.45)
        hgt = w * rng.uniform(0.5, 1.2)
        return Thing(_box3d(img, lab, x - w / 2, ground, w, hgt, w * 0.4, colour, code, light), kind)
    if kind == "pole":
        r = size * rng.uniform(0.02, 0.045)
        top = ground - size * rng.uniform(0.9, 2.0)
        draw.shaded_capsule(img, lab, (x, ground), (x, top), r, r, shade(colour, 0.7), code, light)
        if rng.random() < 0.4:  # a sign
            sw = size * rng.uniform(0.15, 0.3)
            draw.polygon(img, lab, [(x - sw, top), (x + sw, top), (x + sw, top + sw), (x - sw, top + sw)], colour, code)
        return Thing((x - r * 4, top - r, x + r * 4, ground), kind)
    if kind == "bush" or kind == "tree":
        r = size * rng.uniform(0.12, 0.3)
        cy = ground - r
        if kind == "tree":
            cy = ground - size * rng.uniform(0.9, 1.4)
            draw.capsule(img, lab, (x, ground), (x, cy), r * 0.18, r * 0.12, (40, 60, 90), code)
        green = np.array((60, 140, 70)) * rng.uniform(0.6, 1.2)
        for _ in range(7):
            c = (x + rng.normal(0, r * 0.6), cy + rng.normal(0, r * 0.4))
            draw.circle(img, lab, c, r * rng.uniform(0.5, 0.8), shade(green, rng.uniform(0.75, 1.15)), code)
        return Thing((x - 1.6 * r, cy - 1.4 * r, x + 1.6 * r, ground), kind)
    if kind == "table":
        w, hgt = size * rng.uniform(0.5, 1.0), size * rng.uniform(0.38, 0.45)
        leg = size * 0.02
        for lx in (x - w / 2 + leg, x + w / 2 - leg):
            draw.capsule(img, lab, (lx, ground), (lx, ground - hgt), leg, leg, shade(colour, 0.6), code)
        box = _box3d(img, lab, x - w / 2, ground - hgt, w, size * 0.04, w * 0.3, colour, code, light)
        return Thing((box[0], box[1], box[2], ground), kind)
    if kind == "fence":
        w, hgt = size * rng.uniform(0.8, 2.5), size * rng.uniform(0.35, 0.55)
        r = size * 0.012
        for bx in np.arange(x - w / 2, x + w / 2, size * rng.uniform(0.08, 0.16)):
            draw.capsule(img, lab, (bx, ground), (bx, ground - hgt), r, r, colour, code)
        for fy in (0.2, 0.85):
            y = ground - hgt * fy
            draw.capsule(img, lab, (x - w / 2, y), (x + w / 2, y), r, r, shade(colour, 0.85), code)
        return Thing((x - w / 2 - r, ground - hgt - r, x + w / 2 + r, ground), kind)
    if kind == "car":
        w, hgt = size * rng.uniform(1.8, 2.6), size * rng.uniform(0.55, 0.75)
        body = [(x - w / 2, ground - hgt * 0.2), (x + w / 2, ground - hgt * 0.2)]
        body += [(x + w / 2, ground - hgt * 0.55), (x - w / 2, ground - hgt * 0.6)]
        cabin = [(x - w * 0.3, ground - hgt * 0.58), (x + w * 0.3, ground - hgt * 0.55)]
        cabin += [(x + w * 0.18, ground - hgt), (x - w * 0.22, ground - hgt)]
        draw.polygon(img, lab, cabin, shade(colour, 0.9), code)
        inner = np.array(cabin) * 0.85 + np.mean(cabin, axis=0) * 0.15
        draw.polygon(img, None, inner, (90, 80, 70), code)
        draw.polygon(img, lab, body, colour, code)
        for wx in (x - w * 0.3, x + w * 0.3):
            draw.circle(img, lab, (wx, ground - hgt * 0.15), hgt * 0.15, (30, 30, 30), code)
        return Thing((x - w / 2, ground - hgt, x + w / 2, ground), kind)
    if kind == "ball":
        r = size * rng.uniform(0.04, 0.12)
        c = np.array([x, ground - r])
        draw.circle(img, lab, c, r, colour, code)
        draw.circle(img, None, c + light * r * 0.35, r * 0.45, shade(colour, 1.2))
        return Thing((x - r, ground - 2 * r, x + r, ground), kind)
    # "panel": a window, poster or door on the wall, or a sign
    w, hgt = size * rng.uniform(0.15, 0.5), size * rng.uniform(0.15, 0.6)
    top = ground - hgt
    draw.polygon(img, lab, [(x - w / 2, top), (x + w / 2, top), (x + w / 2, ground), (x - w / 2, ground)], colour, code)
    m = min(w, hgt) * 0.1
    inner = [
        (x - w / 2 + m, top + m),
        (x + w / 2 - m, top + m),
        (x + w / 2 - m, ground - m),
        (x - w / 2 + m, ground - m),
    ]
    draw.polygon(img, None, inner, random_colour(rng), code)
    return Thing((x - w / 2, top, x + w / 2, ground), kind)


CLUTTER_KINDS = ("crate", "pole", "bush", "tree", "table", "ball", "panel", "limbs", "limbs")
OCCLUDER_KINDS = ("crate", "pole", "bush", "table", "fence", "car", "limbs")
