"""The unbiased heatmap codec of TransPose: one object for target generation and for decoding.

Shape alphabet: N instances, K keypoints; input size [w, h] (e.g. [192, 256]); heatmap size [W, H]
(e.g. [48, 64]). Keypoints are (x, y) pixel coordinates whose integers are pixel centres.

Encoded (one instance): heatmaps [K, H, W] float32, keypoint_weights [K] float32, and the keypoints in
heatmap coordinates [K, 2]. The joints reach the heatmap by their own affine at heatmap size (the
reference's "joint affine"), so heatmap x = crop x * (W-1)/(w-1), not crop x / 4.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from transpose.codec.dark import decode_heatmaps
from transpose.codec.gaussian import gaussian_targets
from transpose.geometry import affine_points, get_affine_transform, transform_preds


@dataclass(frozen=True)
class HeatmapCodec:
    input_size: tuple[int, int] = (192, 256)  # [w, h]
    heatmap_size: tuple[int, int] = (48, 64)  # [W, H]
    sigma: float = 2.0
    blur_kernel: int = 11

    @classmethod
    def for_model(cls, image_size_hw: tuple[int, int], sigma: float = 2.0, stride: int = 4) -> HeatmapCodec:
        """Codec for a model input of (h, w) with heatmaps at 1/stride."""
        h, w = image_size_hw
        return cls(input_size=(w, h), heatmap_size=(w // stride, h // stride), sigma=sigma)

    def encode(self, keypoints, visible, center, scale, rotation: float = 0.0) -> dict[str, np.ndarray]:
        """keypoints [K, 2] in image coordinates (already flipped if the sample is), visible [K]."""
        matrix = get_affine_transform(center, scale, rotation, self.heatmap_size)
        keypoints_hm = affine_points(keypoints, matrix).astype(np.float32)
        heatmaps, weights = gaussian_targets(keypoints_hm, visible, self.heatmap_size, self.sigma)
        return {"heatmaps": heatmaps, "keypoint_weights": weights, "keypoints": keypoints_hm}

    def decode(self, heatmaps, centers, scales, dark: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """heatmaps [N, K, H, W], centers [N, 2], scales [N, 2] -> (keypoints [N, K, 2] in image
        coordinates, scores [N, K] = heatmap maxima)."""
        heatmaps = np.asarray(heatmaps, dtype=np.float32)
        if heatmaps.shape[-2:] != (self.heatmap_size[1], self.heatmap_size[0]):
            raise ValueError(
                f"heatmaps are {heatmaps.shape[-1]}x{heatmaps.shape[-2]} (w x h) but the codec expects "
                f"{self.heatmap_size[0]}x{self.heatmap_size[1]}"
            )
        coords, maxvals = decode_heatmaps(heatmaps, dark=dark, kernel=self.blur_kernel)
        keypoints = (
            np.stack([transform_preds(coords[i], centers[i], scales[i], self.heatmap_size) for i in range(len(coords))])
            if len(coords)
            else np.zeros((0, heatmaps.shape[1], 2))
        )
        return keypoints.astype(np.float32), maxvals[..., 0]
