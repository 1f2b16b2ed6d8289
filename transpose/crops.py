"""Person crops of whole images, in numpy and OpenCV only (torch-free: the ONNX runtime path uses them too)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from transpose.geometry import box_to_center_scale, get_affine_transform


class ImageDecodeError(ValueError):
    """Bytes that are not a whole JPEG or PNG image; the message names the image and what is wrong."""


def read_image_rgb(path: str | Path) -> np.ndarray:
    """Decode an image file as RGB uint8, ignoring EXIF orientation (as the reference does)."""
    try:
        data = Path(path).read_bytes()
    except OSError as err:
        raise ImageDecodeError(f"cannot read image {path}: {err.strerror or err}") from err
    return decode_image(data, str(path))


def decode_image(data: bytes, name: str = "image") -> np.ndarray:
    """Decode JPEG or PNG bytes as RGB uint8, ignoring EXIF orientation; a truncated file is an error.

    OpenCV decodes the first part of a cut-off JPEG and fills the rest with grey without failing, so the end of
    the data is checked first: a JPEG's last scan must be followed by its end-of-image marker, a PNG must end
    with its IEND chunk.
    """
    problem = truncation(data)
    if problem:
        raise ImageDecodeError(f"cannot decode {name}: {problem}")
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    if image is None:
        raise ImageDecodeError(f"cannot decode {name}: not a JPEG or PNG image ({len(data)} bytes)")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def truncation(data: bytes) -> str | None:
    """Why JPEG/PNG bytes are cut short, or None (also for other formats, which the decoder judges).

    In a JPEG's entropy-coded data every 0xFF byte is stuffed, so FF D9 (end of image) and FF DA (start of
    scan) occur only as markers; an embedded EXIF thumbnail has its own pair, earlier in the file.
    """
    jpeg, png = data[:2] == b"\xff\xd8", data[:8] == b"\x89PNG\r\n\x1a\n"
    if jpeg and data.rfind(b"\xff\xda") < 0:
        return f"truncated JPEG: no image scan ({len(data)} bytes)"
    if jpeg and data.rfind(b"\xff\xd9") < data.rfind(b"\xff\xda"):
        return f"truncated JPEG: no end-of-image marker after the last scan ({len(data)} bytes)"
    if png and data.rfind(b"IEND") < 0:
        return f"truncated PNG: no IEND chunk ({len(data)} bytes)"
    return None


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
