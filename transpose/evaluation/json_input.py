"""Strict reading of the JSON files evaluation and the readers take: any encoding JSON allows, numbers that are
numbers (not bools, not strings), ids numpy and pycocotools can hold, and short renderings of bad values for
the messages that name them."""

from __future__ import annotations

import gc
import json
import math
from pathlib import Path

from transpose.evaluation.oks import NonFiniteError, non_finite_name

INT64_LIMIT = 2**63
_MISSING = object()  # an absent key, as `show` renders it


class CocoFormatError(ValueError):
    """A ground-truth or results file is not in the COCO keypoint format."""


def read_json(path: str | Path, what: str, error: type[ValueError] = CocoFormatError):
    """Parse a JSON file (UTF-8, or UTF-16/32 with or without a BOM); unreadable content raises `error` naming
    the file and `what` was expected there."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; expected {what}")
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise error(f"{path} cannot be read ({err.strerror}); expected {what}") from None
    try:
        return _loads(raw)
    except UnicodeDecodeError as err:
        raise error(
            f"{path} is not UTF-8 text ({err.reason} at byte {err.start}); expected {what}: save it as UTF-8"
        ) from None
    except json.JSONDecodeError as err:
        raise error(f"{path} is not valid JSON ({err}); expected {what}") from None
    except (ValueError, RecursionError) as err:  # an int of over 4300 digits, nesting deeper than Python's stack
        raise error(f"{path} cannot be read as JSON ({err}); expected {what}") from None


def _loads(raw: bytes):
    """json.loads with the cyclic garbage collector paused: a parsed document holds no reference cycles, and on a
    large file (COCO's train annotations: millions of objects) the collector's passes over the growing tree cost
    half as much again as the parse itself, more the larger the file."""
    paused = gc.isenabled()
    gc.disable()
    try:
        return json.loads(raw)
    finally:
        if paused:
            gc.enable()


def is_number(value) -> bool:
    """A JSON number: an int or a float, not a bool."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def is_id(value) -> bool:
    """An integer id numpy and pycocotools can hold: an int (not a bool) in the int64 range."""
    return isinstance(value, int) and not isinstance(value, bool) and -INT64_LIMIT <= value < INT64_LIMIT


def show(value, width: int = 60) -> str:
    """`value` as JSON writes it, shortened for a message ('missing' for an absent key)."""
    if value is _MISSING:
        return "missing"
    try:
        text = json.dumps(value)
    except (TypeError, ValueError, RecursionError):
        text = repr(value)
    return text if len(text) <= width else text[: width - 3] + "..."


def finite_number(value, where: str, what: str, fix: str, error: type[ValueError] = CocoFormatError) -> float:
    """`value` as a float: NaN/inf raise NonFiniteError, anything that is not a number raises `error`."""
    if not is_number(value):
        raise error(f"{where}: {what} is {show(value)}, not a number; {fix}")
    try:
        number = float(value)
    except OverflowError:
        raise error(f"{where}: {what} {show(value)} is too large for a float; {fix}") from None
    if not math.isfinite(number):
        raise NonFiniteError(f"{where}: {what} is {non_finite_name(number)}; {fix}")
    return number
