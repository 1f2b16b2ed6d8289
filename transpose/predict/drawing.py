"""What prediction draws: skeletons on the image, and one person's attention dependency areas."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from transpose.crops import crop
from transpose.inference import normalize
from transpose.keypoints import KeypointSet
from transpose.predict.people import Person

_LEFT, _RIGHT, _MIDDLE = (0, 140, 255), (255, 140, 0), (0, 200, 0)  # RGB


def draw_people(image_rgb: np.ndarray, people: list[Person], keypoint_set: KeypointSet, threshold: float) -> np.ndarray:
    """A copy of the image with each person's skeleton; keypoints scoring below `threshold` are hidden."""
    canvas = image_rgb.copy()
    thickness = max(1, round(min(canvas.shape[:2]) / 250))
    for person in people:
        shown = person.maxvals >= threshold
        if not shown.any():
            continue
        points = [tuple(p) for p in np.rint(person.keypoints).astype(int).tolist()]
        x, y, w, h = np.rint(person.box).astype(int).tolist()
        cv2.rectangle(canvas, (x, y), (x + w, y + h), (200, 200, 200), 1)
        for color, width in (((0, 0, 0), 3), ((255, 255, 255), 1)):  # white on a dark outline
            cv2.putText(canvas, f"#{person.index}", (x + 3, y + 15), cv2.FONT_HERSHEY_SIMPLEX, 0.5, color, width)
        for a, b in keypoint_set.skeleton:
            if shown[a] and shown[b]:
                cv2.line(canvas, points[a], points[b], _limb_color(keypoint_set, a, b), thickness + 1, cv2.LINE_AA)
        for k in np.flatnonzero(shown):
            cv2.circle(canvas, points[k], thickness + 2, (255, 0, 0), -1, cv2.LINE_AA)
    return canvas


def _limb_color(keypoint_set: KeypointSet, a: int, b: int) -> tuple[int, int, int]:
    side = keypoint_set.names[a] + keypoint_set.names[b]
    return _LEFT if "left" in side else _RIGHT if "right" in side else _MIDDLE


def write_image(path: Path, image_rgb: np.ndarray) -> Path:
    if not cv2.imwrite(str(path), cv2.cvtColor(image_rgb, cv2.COLOR_RGB2BGR)):
        raise OSError(f"could not write {path}")
    return path


def explain_person(model, image_rgb: np.ndarray, person: Person, keypoint_set: KeypointSet, out_path: Path) -> Path:
    """The paper's Fig. 6-style dependency areas of one person, on its model-input crop."""
    from transpose.explain import explain_crop, plot_attention_areas

    cfg = model.data_config
    crop_rgb = crop(image_rgb, person.center, person.scale, cfg.image_size)
    device = next(model.parameters()).device
    areas, keypoints, scores = explain_crop(model, normalize(crop_rgb[None], cfg.mean, cfg.std)[0].to(device))
    title = f"{person.file} person #{person.index}: dependency areas per layer, delta={areas.threshold:g}"
    return plot_attention_areas(crop_rgb, keypoints, areas, keypoint_set, out_path, scores=scores, title=title)
