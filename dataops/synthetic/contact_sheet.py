"""A contact sheet: a grid of generated images with their COCO labels drawn, to check the look and the labels.

Left limbs are drawn in blue, right limbs in orange, the middle (face, shoulders, hips) in yellow; visible
joints (v=2) are filled dots, occluded ones (v=1) hollow rings; v=0 joints are not drawn. The thin white box
is the annotation's bbox (the visible mask's box).
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from dataops.synthetic.config import SyntheticConfig
from dataops.synthetic.scene import render_sample

LEFT, RIGHT, MIDDLE = (255, 150, 30), (20, 140, 255), (40, 230, 240)  # BGR


def _side(name: str) -> str:
    return "l" if name.startswith("left") else "r" if name.startswith("right") else "m"


def draw_labels(img: np.ndarray, keypoints: np.ndarray, bbox, scale: float = 1.0) -> None:
    """Draw one person's COCO keypoints [17, 3] and bbox [x, y, w, h] (image coordinates times `scale`)."""
    from transpose.keypoints import COCO  # not at the top: `transpose` imports torch, which render workers skip

    sides = [_side(name) for name in COCO.names]
    colours = {"l": LEFT, "r": RIGHT, "m": MIDDLE}
    x, y, w, h = (v * scale for v in bbox)
    cv2.rectangle(img, (round(x), round(y)), (round(x + w), round(y + h)), (235, 235, 235), 1, cv2.LINE_AA)
    pts = keypoints[:, :2] * scale
    for a, b in COCO.skeleton:
        if keypoints[a, 2] > 0 and keypoints[b, 2] > 0:
            sa, sb = sides[a], sides[b]
            colour = colours[sa] if sa == sb else MIDDLE
            p, q = (round(pts[a, 0]), round(pts[a, 1])), (round(pts[b, 0]), round(pts[b, 1]))
            cv2.line(img, p, q, colour, 2, cv2.LINE_AA)
    for k in range(17):
        v = keypoints[k, 2]
        if v > 0:
            c = (round(pts[k, 0]), round(pts[k, 1]))
            cv2.circle(img, c, 3, (0, 0, 0), -1 if v == 2 else 2, cv2.LINE_AA)
            cv2.circle(img, c, 3 if v == 2 else 4, colours[sides[k]], -1 if v == 2 else 1, cv2.LINE_AA)


def contact_sheet(
    config: SyntheticConfig,
    path: str | Path | None = None,
    num_images: int = 12,
    columns: int = 4,
    split: str = "coco_val",
    tile_width: int = 360,
) -> np.ndarray:
    """Render images 0..num_images-1 of `split` (the same pixels `generate` writes, before JPEG) with labels.

    Returns the BGR sheet and writes it as PNG when `path` is given.
    """
    width, height = config.image_size
    scale = tile_width / width
    tile_h = round(height * scale)
    rows = -(-num_images // columns)
    legend = 28
    sheet = np.full((rows * (tile_h + 4) + legend, columns * (tile_width + 4), 3), 24, np.uint8)
    for i in range(num_images):
        sample = render_sample(config, split, i)
        tile = cv2.resize(sample.image, (tile_width, tile_h), interpolation=cv2.INTER_AREA)
        for person in sample.people:
            draw_labels(tile, person.keypoints, person.bbox, scale)
        r, c = divmod(i, columns)
        y0, x0 = r * (tile_h + 4) + 2, c * (tile_width + 4) + 2
        sheet[y0 : y0 + tile_h, x0 : x0 + tile_width] = tile
    y = sheet.shape[0] - 9
    font = cv2.FONT_HERSHEY_SIMPLEX
    items = [("left", LEFT), ("right", RIGHT), ("middle", MIDDLE)]
    x = 10
    for text, colour in items:
        cv2.line(sheet, (x, y - 5), (x + 24, y - 5), colour, 3, cv2.LINE_AA)
        cv2.putText(sheet, text, (x + 30, y), font, 0.5, (230, 230, 230), 1, cv2.LINE_AA)
        x += 110
    cv2.circle(sheet, (x + 6, y - 5), 4, (230, 230, 230), -1, cv2.LINE_AA)
    cv2.putText(sheet, "visible (v=2)", (x + 16, y), font, 0.5, (230, 230, 230), 1, cv2.LINE_AA)
    x += 150
    cv2.circle(sheet, (x + 6, y - 5), 4, (230, 230, 230), 1, cv2.LINE_AA)
    cv2.putText(sheet, "occluded (v=1)", (x + 16, y), font, 0.5, (230, 230, 230), 1, cv2.LINE_AA)
    x += 160
    text = f"dataops.synthetic, seed {config.seed}, {split} images 0-{num_images - 1}"
    cv2.putText(sheet, text, (x, y), font, 0.5, (160, 160, 160), 1, cv2.LINE_AA)
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        if not cv2.imwrite(str(path), sheet, [cv2.IMWRITE_PNG_COMPRESSION, 9]):
            raise OSError(f"could not write the contact sheet to {path}")
    return sheet
