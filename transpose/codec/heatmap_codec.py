"""The unbiased heatmap codec of TransPose: the one place for the crop <-> heatmap convention.

Shape alphabet: N instances (B in a batch), K keypoints; input size [w, h] (e.g. [192, 256]); heatmap size
[W, H] (e.g. [48, 64]); stride = w / W (4 for every TransPose model). Keypoints are (x, y) pixel
coordinates whose integers are pixel centres.

Conventions, stated once:
    crop <-> heatmap   a scaling about the centres by (W-1)/(w-1) in both axes (the affine is a similarity
                       set by the width): heatmap x = (crop x - (w-1)/2) * (W-1)/(w-1) + (W-1)/2, and y
                       about (h-1)/2 -> (H-1)/2; the reference's "joint affine" at heatmap size, not crop / stride
    image <-> heatmap  the unbiased affine of the person's box at heatmap size (`transpose.geometry`)
    visualisation      the reference's rule for explanation figures (spec "Attention as explanation"): a
                       keypoint at heatmap p is drawn at input pixel p * stride + 0.5, and its token is that
                       pixel // token stride; it is not the decoding convention, and is used for nothing else

Encoded (one instance, `encode`): heatmaps [K, H, W] float32, keypoint_weights [K] float32, and the keypoints
in heatmap coordinates [K, 2]. Batched targets on the training device: `targets`. Decoding: argmax + DARK,
then back to the image (`decode`) or to the crop (`decode_crop`).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # torch for training targets only: decoding imports without it (ONNX users)
    import torch

from transpose.codec.dark import decode_heatmaps
from transpose.codec.gaussian import gaussian_targets, gaussian_targets_torch
from transpose.geometry import affine_points, get_affine_transform, transform_preds


def _about_centres(points, ratio: tuple[float, float], source: tuple[float, float], target: tuple[float, float]):
    """points [..., 2] (numpy or torch) scaled by `ratio` about `source`, moved onto `target`."""
    torch = sys.modules.get("torch")  # a tensor can only exist if torch was imported
    if torch is not None and isinstance(points, torch.Tensor):
        return (points - points.new_tensor(source)) * points.new_tensor(ratio) + points.new_tensor(target)
    points = np.asarray(points, dtype=np.float64)
    return (points - np.asarray(source)) * np.asarray(ratio) + np.asarray(target)


@dataclass(frozen=True)
class HeatmapCodec:
    input_size: tuple[int, int] = (192, 256)  # [w, h]
    heatmap_size: tuple[int, int] = (48, 64)  # [W, H]
    sigma: float = 2.0
    blur_kernel: int = 11

    @classmethod
    def from_data_config(cls, data_config, sigma: float = 2.0) -> HeatmapCodec:
        """The codec of a model: its `data_config` gives the input and heatmap sizes, both (h, w)."""
        (h, w), (hm_h, hm_w) = data_config.image_size, data_config.heatmap_size
        return cls(input_size=(w, h), heatmap_size=(hm_w, hm_h), sigma=sigma)

    @property
    def stride(self) -> int:
        """Input pixels per heatmap pixel."""
        return self.input_size[0] // self.heatmap_size[0]

    # ---- crop <-> heatmap ----------------------------------------------------------------------------------
    def _centres(self) -> tuple[tuple[float, float], tuple[float, float], tuple[float, float]]:
        (w, h), (hm_w, hm_h) = self.input_size, self.heatmap_size
        ratio = (hm_w - 1) / (w - 1)  # the affine is a similarity: the width sets the factor of both axes
        return (ratio, ratio), ((w - 1) / 2, (h - 1) / 2), ((hm_w - 1) / 2, (hm_h - 1) / 2)

    def crop_to_heatmap(self, points):
        """Crop pixels [..., 2] -> heatmap pixels (numpy or torch)."""
        ratio, crop_centre, hm_centre = self._centres()
        return _about_centres(points, ratio, crop_centre, hm_centre)

    def heatmap_to_crop(self, points):
        """Heatmap pixels [..., 2] -> crop pixels (numpy or torch)."""
        (rx, ry), crop_centre, hm_centre = self._centres()
        return _about_centres(points, (1 / rx, 1 / ry), hm_centre, crop_centre)

    def visual_pixel(self, points_hm) -> np.ndarray:
        """The reference's visualisation rule (explanations only): heatmap p -> input pixel p * stride + 0.5."""
        return np.asarray(points_hm, dtype=np.float64) * self.stride + 0.5

    # ---- encoding ------------------------------------------------------------------------------------------
    def encode(self, keypoints, visible, center, scale, rotation: float = 0.0) -> dict[str, np.ndarray]:
        """keypoints [K, 2] in image coordinates (already flipped if the sample is), visible [K]."""
        matrix = get_affine_transform(center, scale, rotation, self.heatmap_size)
        keypoints_hm = affine_points(keypoints, matrix).astype(np.float32)
        heatmaps, weights = gaussian_targets(keypoints_hm, visible, self.heatmap_size, self.sigma)
        return {"heatmaps": heatmaps, "keypoint_weights": weights, "keypoints": keypoints_hm}

    def targets(
        self, joints_crop: torch.Tensor, visible: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Batched training targets on the joints' device: crop joints [B, K, 2], visibility [B, K] ->
        (heatmaps [B, K, H, W], weights [B, K], heatmap joints [B, K, 2]). Same rules as `encode`."""
        joints_hm = self.crop_to_heatmap(joints_crop.float())
        heatmaps, weights = gaussian_targets_torch(joints_hm, visible, self.heatmap_size, self.sigma)
        return heatmaps, weights, joints_hm

    # ---- decoding ------------------------------------------------------------------------------------------
    def _check(self, heatmaps) -> np.ndarray:
        heatmaps = np.asarray(heatmaps, dtype=np.float32)
        if heatmaps.shape[-2:] != (self.heatmap_size[1], self.heatmap_size[0]):
            raise ValueError(
                f"heatmaps are {heatmaps.shape[-1]}x{heatmaps.shape[-2]} (w x h) but the codec expects "
                f"{self.heatmap_size[0]}x{self.heatmap_size[1]}"
            )
        return heatmaps

    def decode(self, heatmaps, centers, scales, dark: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """heatmaps [N, K, H, W], centers [N, 2], scales [N, 2] -> (keypoints [N, K, 2] in image
        coordinates, scores [N, K] = heatmap maxima)."""
        heatmaps = self._check(heatmaps)
        coords, maxvals = decode_heatmaps(heatmaps, dark=dark, kernel=self.blur_kernel)
        keypoints = (
            np.stack([transform_preds(coords[i], centers[i], scales[i], self.heatmap_size) for i in range(len(coords))])
            if len(coords)
            else np.zeros((0, heatmaps.shape[1], 2))
        )
        return keypoints.astype(np.float32), maxvals[..., 0]

    def decode_heatmap_coords(self, heatmaps, dark: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """heatmaps [N, K, H, W] -> (keypoints [N, K, 2] in heatmap pixels, scores [N, K])."""
        coords, maxvals = decode_heatmaps(self._check(heatmaps), dark=dark, kernel=self.blur_kernel)
        return coords, maxvals[..., 0]

    def decode_crop(self, heatmaps, dark: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """heatmaps [N, K, H, W] -> (keypoints [N, K, 2] in crop pixels, scores [N, K])."""
        coords, scores = self.decode_heatmap_coords(heatmaps, dark)
        return self.heatmap_to_crop(coords).astype(np.float32), scores
