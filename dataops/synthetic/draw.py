"""Drawing primitives that paint a BGR image (anti-aliased) and, with the same shape, an owner/part label map.

Every function takes `img` (H x W x 3 uint8) and `lab` (H x W uint16 or None) and draws in place with OpenCV,
at 1/16-pixel precision. A point (x, y) is in pixel coordinates: the centre of pixel (i, j) is (i, j).
"""

from __future__ import annotations

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
    cv2.circle(img, _pt(c), _r(r), colour, -1, cv2.LINE_AA, SHIFT)
    if lab is not None:
        cv2.circle(lab, _pt(c), _r(r), code, -1, cv2.LINE_8, SHIFT)


def ellipse(img, lab, c, axes, angle, colour, code=0, start=0.0, end=360.0) -> None:
    ax = (_r(axes[0]), _r(axes[1]))
    cv2.ellipse(img, _pt(c), ax, float(angle), start, end, colour, -1, cv2.LINE_AA, SHIFT)
    if lab is not None:
        cv2.ellipse(lab, _pt(c), ax, float(angle), start, end, code, -1, cv2.LINE_8, SHIFT)


def polygon(img, lab, points, colour, code=0) -> None:
    pts = fix(points)
    cv2.fillPoly(img, [pts], colour, cv2.LINE_AA, SHIFT)
    if lab is not None:
        cv2.fillPoly(lab, [pts], code, cv2.LINE_8, SHIFT)


def line(img, p0, p1, colour, thickness: int = 1) -> None:
    cv2.line(img, _pt(p0), _pt(p1), colour, max(1, int(thickness)), cv2.LINE_AA, SHIFT)


def capsule(img, lab, p0, p1, r0, r1, colour, code=0) -> None:
    """A tapered capsule: the convex hull of the circles (p0, r0) and (p1, r1)."""
    p0, p1 = np.asarray(p0, dtype=np.float64), np.asarray(p1, dtype=np.float64)
    d = p1 - p0
    length = float(np.hypot(d[0], d[1]))
    if length > 1e-6:
        n = np.array([-d[1], d[0]]) / length
        quad = fix([p0 + n * r0, p1 + n * r1, p1 - n * r1, p0 - n * r0])
        cv2.fillConvexPoly(img, quad, colour, cv2.LINE_AA, SHIFT)
        if lab is not None:
            cv2.fillConvexPoly(lab, quad, code, cv2.LINE_8, SHIFT)
    circle(img, lab, p0, r0, colour, code)
    circle(img, lab, p1, r1, colour, code)


def shaded_capsule(img, lab, p0, p1, r0, r1, colour, code, light) -> None:
    """A capsule with a shadow stripe on the side away from the light (2D unit vector) and a highlight."""
    capsule(img, lab, p0, p1, r0, r1, colour, code)
    if max(r0, r1) < 2.0:
        return
    p0, p1 = np.asarray(p0, dtype=np.float64), np.asarray(p1, dtype=np.float64)
    d = p1 - p0
    length = float(np.hypot(d[0], d[1]))
    if length < 1e-6:
        return
    n = np.array([-d[1], d[0]]) / length
    if float(n @ light) < 0:
        n = -n  # n points toward the light
    dark = tuple(c * 0.72 for c in colour)
    capsule(img, None, p0 - n * 0.5 * r0, p1 - n * 0.5 * r1, 0.48 * r0, 0.48 * r1, dark, 0)
    bright = tuple(min(255.0, c * 1.18 + 12) for c in colour)
    capsule(img, None, p0 + n * 0.45 * r0, p1 + n * 0.45 * r1, 0.2 * r0, 0.2 * r1, bright, 0)


def textured_fill(img, lab, points, code, colour_fn) -> None:
    """Fill a polygon with per-pixel colours: colour_fn(xs, ys) -> [h, w, 3] float for the pixel grid of its box.

    The polygon is drawn anti-aliased into a local alpha mask, so only its bounding box is touched.
    """
    pts = np.asarray(points, dtype=np.float64)
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
