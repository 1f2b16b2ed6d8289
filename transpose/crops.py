"""Person crops of whole images, in numpy and OpenCV only (torch-free: the ONNX runtime path uses them too)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from transpose.geometry import box_to_center_scale, get_affine_transform


def read_image_rgb(path: str | Path) -> np.ndarray:
    """Decode an image as RGB uint8, ignoring EXIF orientation (as the reference does)."""
    image = cv2.imread(str(path), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    if image is None:
        raise ValueError(f"cannot decode image {path}: missing, truncated or not an image file")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def crop(image_rgb: np.ndarray, center, scale, image_size_hw: tuple[int, int], rotation: float = 0.0) -> np.ndarray:
    """The reference's bilinear affine crop with a constant 0 border; returns uint8 [h, w, 3]."""
    h, w = image_size_hw
    matrix = get_affine_transform(center, scale, rotation, (w, h))
    return cv2.warpAffine(image_rgb, matrix, (w, h), flags=cv2.INTER_LINEAR, borderValue=(0, 0, 0))


def person_crops(
    image_rgb: np.ndarray, boxes, image_size_hw: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Crops of [x, y, w, h] boxes at the model input's aspect ratio (x1.25 padding).

    Returns centers [N, 2], scales [N, 2] and uint8 crops [N, h, w, 3].
    """
    h, w = image_size_hw
    pairs = [box_to_center_scale(b, w / h) for b in boxes]
    centers = np.asarray([c for c, _ in pairs], np.float32).reshape(-1, 2)
    scales = np.asarray([s for _, s in pairs], np.float32).reshape(-1, 2)
    crops = [crop(image_rgb, c, s, image_size_hw) for c, s in zip(centers, scales)]
    return centers, scales, np.stack(crops) if crops else np.zeros((0, h, w, 3), np.uint8)
