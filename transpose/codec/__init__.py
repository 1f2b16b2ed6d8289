"""Targets, decoding and flip test for heatmap keypoint models.

Names are imported on first use, so that the numpy parts (the codec's decoding, DARK) load without torch."""

from __future__ import annotations

import importlib

_WHERE = {
    "HeatmapCodec": "transpose.codec.heatmap_codec",
    "decode_heatmaps": "transpose.codec.dark",
    "get_max_preds": "transpose.codec.dark",
    "flip_back": "transpose.codec.flip",
    "flip_test": "transpose.codec.flip",
    "gaussian_targets": "transpose.codec.gaussian",
    "gaussian_targets_torch": "transpose.codec.gaussian",
}
__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module 'transpose.codec' has no attribute {name!r}")
    return getattr(importlib.import_module(_WHERE[name]), name)
