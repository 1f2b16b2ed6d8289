"""Argument types the commands share: boxes, number lists, keypoint sets, devices."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import torch

from transpose.keypoints import COCO, MPII, KeypointSet, from_coco_category

BUILT_IN_KEYPOINTS = {"coco": COCO, "mpii": MPII}


def parse_box(text: str) -> list[float]:
    """x,y,w,h in pixels, finite, with w and h > 0."""
    try:
        box = [float(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"box must be x,y,w,h numbers, got {text!r}") from None
    if len(box) != 4 or not all(map(math.isfinite, box)) or box[2] <= 0 or box[3] <= 0:
        raise argparse.ArgumentTypeError(f"box must be four finite numbers x,y,w,h with w, h > 0, got {text!r}")
    return box


def parse_floats(text: str) -> list[float]:
    """A comma list of numbers, or a .json file holding a list of them."""
    try:
        if text.endswith(".json"):
            return [float(v) for v in json.loads(Path(text).read_text())]
        return [float(v) for v in text.split(",")]
    except (OSError, ValueError, TypeError) as err:
        raise argparse.ArgumentTypeError(f"expected numbers (a,b,c or a .json list), got {text!r}: {err}") from None


def keypoint_set(text: str) -> KeypointSet:
    """`coco`, `mpii`, or a COCO-format keypoint file whose first keypoint category is the set."""
    if text in BUILT_IN_KEYPOINTS:
        return BUILT_IN_KEYPOINTS[text]
    path = Path(text)
    try:
        data = json.loads(path.read_text())
        category = next(c for c in data["categories"] if isinstance(c, dict) and c.get("keypoints"))
    except (OSError, ValueError, KeyError, TypeError, StopIteration) as err:
        raise argparse.ArgumentTypeError(
            f"--keypoints {text!r}: give coco, mpii, or a COCO-format keypoint file with a keypoint category ({err})"
        ) from None
    try:
        return from_coco_category(category, where=f"{path}: categories")
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def pick_device(name: str | None) -> torch.device:
    """cuda when available unless told otherwise; a clear error for cuda without a GPU."""
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA GPU is visible here; use --device cpu")
    return torch.device(name or ("cuda" if torch.cuda.is_available() else "cpu"))
