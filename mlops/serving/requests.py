"""The requests of the serving model: base64 images with optional person boxes, checked before any decoding.

One request row is `{"image": BASE64, "boxes": [[x, y, w, h], ...], "box_scores": [s, ...]}`: `boxes` and
`box_scores` are optional (no boxes: the whole image is one person, as `transpose predict` without --boxes;
no scores: every box scores 1). A bad row raises `RequestError`, whose message names the row and the field and
says what to send instead; the scoring server answers it with HTTP 400.
"""

from __future__ import annotations

import base64
import binascii
import math
import struct
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from transpose.crops import ImageDecodeError, decode_image

MAX_IMAGE_PIXELS = 40_000_000  # 40 megapixels: a larger image is refused before it is decoded
MAX_BOXES = 1000
REQUEST_EXAMPLE = '{"dataframe_records": [{"image": BASE64_JPEG_OR_PNG, "boxes": [[x, y, w, h]], "box_scores": [s]}]}'


class RequestError(ValueError):
    """A request the model cannot answer; the message says which row and field and what to send."""


@dataclass
class PoseRequest:
    """One image of a request, decoded, with its person boxes."""

    index: int
    image: np.ndarray  # RGB uint8 [H, W, 3]
    boxes: np.ndarray | None  # [M, 4] x, y, w, h in pixels; None: the whole image
    box_scores: np.ndarray | None  # [M]


def parse_rows(rows: list[Mapping], max_pixels: int = MAX_IMAGE_PIXELS) -> list[PoseRequest]:
    """Check and decode every row; the first bad one raises RequestError."""
    if not rows:
        raise RequestError(f"the request has no rows; send {REQUEST_EXAMPLE}")
    return [parse_row(i, row, max_pixels) for i, row in enumerate(rows)]


def parse_row(index: int, row: Mapping, max_pixels: int = MAX_IMAGE_PIXELS) -> PoseRequest:
    where = f"row {index}"
    encoded = row.get("image")
    if not isinstance(encoded, str) or not encoded:
        raise RequestError(f"{where}: field 'image' is missing or not a string; send {REQUEST_EXAMPLE}")
    data = decode_base64(encoded, where)
    height, width = image_shape(data, where)
    if height * width > max_pixels:
        raise RequestError(
            f"{where}: the image is {width}x{height} = {height * width / 1e6:.1f} megapixels, over the limit of "
            f"{max_pixels / 1e6:g}; resize it first (the model sees each person at its input size anyway)"
        )
    try:
        image = decode_image(data, f"{where} 'image'")
    except ImageDecodeError as err:
        raise RequestError(str(err)) from None
    boxes = parse_boxes(row.get("boxes"), where, width, height)
    scores = parse_scores(row.get("box_scores"), where, boxes)
    return PoseRequest(index, image, boxes, scores)


def decode_base64(encoded: str, where: str) -> bytes:
    text = encoded.split(",", 1)[1] if encoded.startswith("data:") else encoded  # a data: URI is fine too
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as err:
        raise RequestError(f"{where}: field 'image' is not base64 ({err}); send the base64 of the file") from None


def image_shape(data: bytes, where: str) -> tuple[int, int]:
    """(height, width) from a JPEG or PNG header, without decoding the pixels."""
    if data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) >= 24 and data[12:16] == b"IHDR":
        width, height = struct.unpack(">II", data[16:24])
        return height, width
    if data[:2] == b"\xff\xd8":
        shape = _jpeg_shape(data)
        if shape:
            return shape
        raise RequestError(f"{where}: field 'image' is a JPEG without a frame header (truncated or corrupt)")
    raise RequestError(
        f"{where}: field 'image' is not a JPEG or PNG file ({len(data)} bytes, starting {data[:8]!r}); "
        "send the base64 of a .jpg or .png file"
    )


_SOF_MARKERS = set(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}  # start-of-frame markers (not DHT, JPG, DAC)


def _jpeg_shape(data: bytes) -> tuple[int, int] | None:
    pos = 2
    while pos + 9 <= len(data):
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in (0x01, *range(0xD0, 0xD8)):  # markers without a length
            pos += 2
            continue
        (length,) = struct.unpack(">H", data[pos + 2 : pos + 4])
        if marker in _SOF_MARKERS:
            height, width = struct.unpack(">HH", data[pos + 5 : pos + 9])
            return height, width
        if marker == 0xDA:  # start of scan before any frame header
            return None
        pos += 2 + length
    return None


def parse_boxes(value, where: str, width: int, height: int) -> np.ndarray | None:
    """[M, 4] boxes that each overlap the image with a positive size; None when the row has none."""
    if _absent(value):
        return None
    value = _as_list(value)
    if value is None or not all(_as_list(box) is not None and len(_as_list(box)) == 4 for box in value):
        raise RequestError(f"{where}: field 'boxes' must be a list of [x, y, w, h] boxes in pixels, got {value!r:.200}")
    if len(value) > MAX_BOXES:
        raise RequestError(f"{where}: {len(value)} boxes, more than {MAX_BOXES}; send fewer people per image")
    boxes = []
    for j, box in enumerate(value):
        try:
            x, y, w, h = (float(v) for v in _as_list(box))
        except (TypeError, ValueError):
            raise RequestError(f"{where}: box {j} {box!r:.100} is not four numbers x, y, w, h") from None
        if not all(math.isfinite(v) for v in (x, y, w, h)) or w <= 0 or h <= 0:
            raise RequestError(f"{where}: box {j} [{x:g}, {y:g}, {w:g}, {h:g}] needs finite x, y and w, h > 0")
        if x >= width or y >= height or x + w <= 0 or y + h <= 0:
            raise RequestError(
                f"{where}: box {j} [{x:g}, {y:g}, {w:g}, {h:g}] lies outside the {width}x{height} image; boxes are "
                "[x, y, w, h] in the image's pixels"
            )
        boxes.append([x, y, w, h])
    return np.asarray(boxes, np.float64).reshape(-1, 4)


def parse_scores(value, where: str, boxes: np.ndarray | None) -> np.ndarray | None:
    if _absent(value):
        return None if boxes is None else np.ones(len(boxes))
    if boxes is None:
        raise RequestError(f"{where}: 'box_scores' without 'boxes'; send both, or neither")
    scores = _as_list(value)
    try:
        scores = np.asarray([float(s) for s in scores], np.float64) if scores is not None else None
    except (TypeError, ValueError):
        scores = None
    if scores is None or len(scores) != len(boxes) or not np.isfinite(scores).all():
        raise RequestError(f"{where}: 'box_scores' must be {len(boxes)} finite numbers, one per box")
    return scores


def _as_list(value) -> list | None:
    """JSON arrays arrive as lists, or as numpy arrays once MLflow has read them into a DataFrame."""
    if isinstance(value, np.ndarray):
        return list(value)
    return list(value) if isinstance(value, (list, tuple)) else None


def _absent(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))
