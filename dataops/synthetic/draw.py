"""Drawing primitives that paint a BGR image (anti-aliased) and, with the same shape, an owner/part label map.

Every function takes `img` (H x W x 3 uint8, or None) and `lab` (H x W uint16, or None) and draws in place with
OpenCV, at 1/16-pixel precision; with `img` None only the label map is painted (label-only scenes: the labels
of a picture without its pixels). A point (x, y) is in pixel coordinates: the centre of pixel (i, j) is (i, j).
"""

from __future__ import annotations

import math

import cv2
import numpy as np

SHIFT = 4
_ONE = 1 << SHIFT


def fix(points) -> np.ndarray:
    """Float points [..., 2] -> int32 points at 1/16 pixel for the `shift` argument of OpenCV."""
    return np.round(np.asarray(points, dtype=np.float64) * _ONE).astype(np.int32)


def _pt(p) -> tuple[int, int]:
    return (round(float(p[0]) * _ONE), round(float(p[1]) * _ONE))


def _r(r: float) -> int:
    return max(1, round(r * _ONE))


def circle(img, lab, c, r, colour, code=0) -> None:
    if img is not None:
        cv2.circle(img, _pt(c), _r(r), colour, -1, cv2.LINE_AA, SHIFT)
    if lab is not None:
        cv2.circle(lab, _pt(c), _r(r), code, -1, cv2.LINE_8, SHIFT)


def ellipse(img, lab, c, axes, angle, colour, code=0, start=0.0, end=360.0) -> None:
    ax = (_r(axes[0]), _r(axes[1]))
    if img is not None:
        cv2.ellipse(img, _pt(c), ax, float(angle), start, end, colour, -1, cv2.LINE_AA, SHIFT)
    if lab is not None:
        cv2.ellipse(lab, _pt(c), ax, float(angle), start, end, code, -1, cv2.LINE_8, SHIFT)


def polygon(img, lab, points, colour, code=0) -> None:
    pts = fix(points)
    if img is not None:
        cv2.fillPoly(img, [pts], colour, cv2.LINE_AA, SHIFT)
    if lab is not None:
        cv2.fillPoly(lab, [pts], code, cv2.LINE_8, SHIFT)


def line(img, p0, p1, colour, thickness: int = 1) -> None:
    if img is None:
        return
    cv2.line(img, _pt(p0), _pt(p1), colour, max(1, int(thickness)), cv2.LINE_AA, SHIFT)


def capsule_outline(p0, p1, r0, r1) -> np.ndarray:
    """Polygon [n, 2] (int32, 1/16 px) of a tapered capsule: the convex hull of circles (p0, r0) and (p1, r1)."""
    x0, y0, x1, y1 = float(p0[0]), float(p0[1]), float(p1[0]), float(p1[1])
    dx, dy = x1 - x0, y1 - y0
    length = math.hypot(dx, dy)
    rmax = max(r0, r1)
    k = 3 if rmax < 3 else 5 if rmax < 10 else 7  # points per end
    # the outer tangents touch both circles at the same angle from the axis: +-(90 deg -+ taper angle)
    tilt = math.asin(max(-1.0, min(1.0, (r0 - r1) / length))) if length > abs(r0 - r1) else 0.0
    base = math.atan2(dy, dx) if length > 1e-6 else 0.0
    half1, half0 = math.pi / 2 - tilt, math.pi / 2 + tilt
    pts = []
    for i in range(k):
        a = base - half1 + 2 * half1 * i / (k - 1)
        pts.append((round((x1 + r1 * math.cos(a)) * _ONE), round((y1 + r1 * math.sin(a)) * _ONE)))
    for i in range(k):
        a = base + math.pi - half0 + 2 * half0 * i / (k - 1)
        pts.append((round((x0 + r0 * math.cos(a)) * _ONE), round((y0 + r0 * math.sin(a)) * _ONE)))
    return np.array(pts, np.int32)


def capsule(img, lab, p0, p1, r0, r1, colour, code=0) -> None:
    """A tapered capsule (one convex polygon)."""
    pts = capsule_outline(p0, p1, r0, r1)
    if img is not None:
        cv2.fillConvexPoly(img, pts, colour, cv2.LINE_AA, SHIFT)
    if lab is not None:
        cv2.fillConvexPoly(lab, pts, code, cv2.LINE_8, SHIFT)


def shaded_capsule(img, lab, p0, p1, r0, r1, colour, code, light) -> None:
    """A capsule with a soft shadow on the side away from the light (2D unit vector) and a highlight."""
    capsule(img, lab, p0, p1, r0, r1, colour, code)
    if img is None or max(r0, r1) < 2.0:  # the strips change colours only
        return
    x0, y0, x1, y1 = float(p0[0]), float(p0[1]), float(p1[0]), float(p1[1])
    length = math.hypot(x1 - x0, y1 - y0)
    if length < 1e-6:
        return
    nx, ny = (y0 - y1) / length, (x1 - x0) / length
    if nx * light[0] + ny * light[1] < 0:
        nx, ny = -nx, -ny  # n points toward the light
    # nested strips from the shadow side (a soft falloff instead of one hard stripe), then a highlight;
    # thin limbs (under 4 px) get the middle strip only
    strips = ((-0.35, 0.62, 0.9), (-0.58, 0.4, 0.8), (0.4, 0.25, 1.1)) if max(r0, r1) >= 4.0 else ((-0.45, 0.5, 0.85),)
    for offset, radius, factor in strips:
        c = tuple(min(255.0, v * factor + (6.0 if factor > 1 else 0.0)) for v in colour)
        a = (x0 + nx * offset * r0, y0 + ny * offset * r0)
        b = (x1 + nx * offset * r1, y1 + ny * offset * r1)
        pts = capsule_outline(a, b, radius * r0, radius * r1)
        cv2.fillConvexPoly(img, pts, c, cv2.LINE_AA, SHIFT)


def textured_fill(img, lab, points, code, colour_fn) -> None:
    """Fill a polygon with per-pixel colours: colour_fn(xs, ys) -> [h, w, 3] float for the pixel grid of its box.

    The polygon is drawn anti-aliased into a local alpha mask, so only its bounding box is touched.
    """
    pts = np.asarray(points, dtype=np.float64)
    if img is None:
        if lab is not None:
            cv2.fillPoly(lab, [fix(pts)], code, cv2.LINE_8, SHIFT)
        return
    height, width = img.shape[:2]
    x0, y0 = max(0, int(np.floor(pts[:, 0].min())) - 1), max(0, int(np.floor(pts[:, 1].min())) - 1)
    x1, y1 = min(width, int(np.ceil(pts[:, 0].max())) + 2), min(height, int(np.ceil(pts[:, 1].max())) + 2)
    if x1 <= x0 or y1 <= y0:
        return
    mask = np.zeros((y1 - y0, x1 - x0), np.uint8)
    cv2.fillPoly(mask, [fix(pts - [x0, y0])], 255, cv2.LINE_AA, SHIFT)
    if lab is not None:
        cv2.fillPoly(lab, [fix(pts)], code, cv2.LINE_8, SHIFT)
    xs = np.arange(x0, x1, dtype=np.float32)[None, :]
    ys = np.arange(y0, y1, dtype=np.float32)[:, None]
    colour = colour_fn(xs, ys)
    alpha = mask[..., None].astype(np.float32) * (1.0 / 255.0)
    roi = img[y0:y1, x0:x1]
    roi[...] = np.clip(roi * (1.0 - alpha) + colour * alpha + 0.5, 0, 255).astype(np.uint8)
