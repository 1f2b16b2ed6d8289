"""A fake person detector for the val images, so that the detected-box evaluation path is exercised.

It behaves like a real one in the ways that matter to top-down evaluation:
    * each annotated person is found with a probability that falls for small people (sqrt(area) under ~30 px)
      and for heavily occluded ones (few visible joints); found boxes are the visible-mask box with jittered
      edges (more jitter when occluded), scored by box quality (IoU with the truth) and visibility;
    * some people get a second, worse and lower-scored box (a duplicate left after NMS);
    * false positives: boxes on clutter (limb-like distractors score highest), on random background, and
      around pairs of overlapping people, with low-ish scores.
Boxes are [x, y, w, h] clipped to the image; scores are in (0, 1).
"""

from __future__ import annotations

import numpy as np

from dataops.synthetic.background import Thing
from dataops.synthetic.config import SyntheticConfig


def box_iou(a, b) -> float:
    """IoU of two [x, y, w, h] boxes."""
    iw = max(0.0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = a[2] * a[3] + b[2] * b[3] - inter
    return inter / union if union > 0 else 0.0


def _clip(x0, y0, x1, y1, width, height) -> list[float] | None:
    x0, x1 = float(np.clip(x0, 0, width - 1)), float(np.clip(x1, 0, width - 1))
    y0, y1 = float(np.clip(y0, 0, height - 1)), float(np.clip(y1, 0, height - 1))
    if x1 - x0 < 2 or y1 - y0 < 2:
        return None
    return [round(x0, 2), round(y0, 2), round(x1 - x0, 2), round(y1 - y0, 2)]


def _jitter(box, sigma, rng, width, height) -> list[float] | None:
    x, y, w, h = box
    d = rng.normal(0, sigma, size=4)
    return _clip(x + d[0] * w, y + d[1] * h, x + w + d[2] * w, y + h + d[3] * h, width, height)


def fake_detections(
    people, things: list[Thing], cfg: SyntheticConfig, rng: np.random.Generator
) -> list[tuple[list[float], float]]:
    """[(box [x, y, w, h], score)] for one image; `people` are scene.PersonLabel's."""
    width, height = cfg.image_size
    dets: list[tuple[list[float], float]] = []
    for person in people:
        kpts = person.keypoints
        inside = max(1, int((kpts[:, 2] > 0).sum()))
        visible = float((kpts[:, 2] == 2).sum()) / inside
        small = float(np.clip((30.0 - np.sqrt(person.area)) / 20.0, 0.0, 1.0))
        hidden = float(np.clip((0.5 - visible) / 0.5, 0.0, 1.0))
        if rng.random() < min(0.95, 0.03 + 0.6 * small + 0.45 * hidden):
            continue
        sigma = cfg.det_box_jitter * (1.0 + 1.5 * hidden + small)
        box = _jitter(person.bbox, sigma, rng, width, height)
        if box is None:
            continue
        quality = box_iou(box, person.bbox)
        score = 0.25 + 0.7 * quality**1.5 * (0.55 + 0.45 * visible) + rng.normal(0, 0.04)
        dets.append((box, float(np.clip(score, 0.02, 0.999))))
        if rng.random() < 0.12:
            dup = _jitter(person.bbox, 3 * sigma, rng, width, height)
            if dup is not None:
                dets.append((dup, float(np.clip(score * rng.uniform(0.15, 0.5), 0.01, 0.99))))
    for _ in range(int(rng.poisson(cfg.det_false_positives))):
        if things and rng.random() < 0.6:
            limb_like = [t for t in things if t.limb_like]
            pool = limb_like if limb_like and rng.random() < 0.6 else things
            thing = pool[int(rng.integers(len(pool)))]
            x0, y0, x1, y1 = thing.box
            box = _jitter([x0, y0, x1 - x0, y1 - y0], 0.08, rng, width, height)
            top = 0.6 if thing.limb_like else 0.4
        else:
            h = rng.uniform(24, 0.6 * height)
            w = h * rng.uniform(0.3, 0.8)
            x0, y0 = rng.uniform(-0.1 * w, width - 0.9 * w), rng.uniform(-0.1 * h, height - 0.9 * h)
            box = _clip(x0, y0, x0 + w, y0 + h, width, height)
            top = 0.3
        if box is not None:
            dets.append((box, float(rng.uniform(0.02, top))))
    for i, a in enumerate(people):
        for b in people[i + 1 :]:
            if box_iou(a.bbox, b.bbox) > 0.1 and rng.random() < 0.3:  # one box around two people
                ax, ay, aw, ah = a.bbox
                bx, by, bw, bh = b.bbox
                box = _clip(min(ax, bx), min(ay, by), max(ax + aw, bx + bw), max(ay + ah, by + bh), width, height)
                if box is not None:
                    dets.append((box, float(rng.uniform(0.05, 0.45))))
    return dets
