"""Targets, decoding and flip test for heatmap keypoint models."""

from transpose.codec.dark import decode_heatmaps, get_max_preds
from transpose.codec.flip import flip_back, flip_test
from transpose.codec.gaussian import gaussian_targets, gaussian_targets_torch
from transpose.codec.heatmap_codec import HeatmapCodec

__all__ = [
    "HeatmapCodec",
    "decode_heatmaps",
    "flip_back",
    "flip_test",
    "gaussian_targets",
    "gaussian_targets_torch",
    "get_max_preds",
]
