"""Keypoints from an exported TransPose ONNX file with onnxruntime, numpy and OpenCV: no torch.

The same protocol as `transpose.inference.predict_boxes`: each [x, y, w, h] box is cropped at the model's
aspect ratio (x1.25), normalised with the mean/std in the file, run with the flip test (the mirrored crop's
heatmaps flipped back, left/right channels swapped, averaged), decoded with DARK and mapped back to image
pixels by the model's codec.

    from transpose.export.onnx_runtime import OnnxPoseModel
    from transpose.crops import read_image_rgb

    model = OnnxPoseModel("model.onnx")
    keypoints, scores = model.predict(read_image_rgb("photo.jpg"), [[x, y, w, h]])  # [N, K, 2], [N, K]
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from transpose.codec.heatmap_codec import HeatmapCodec
from transpose.crops import person_crops

META_PREFIX = "transpose."


class OnnxPoseModel:
    """An exported model and the facts from its metadata (input size, mean/std, keypoints, flip pairs)."""

    def __init__(self, path: str | Path, providers: list[str] | None = None):
        import onnxruntime as ort

        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"{self.path} does not exist: export one with `transpose export`")
        self.session = ort.InferenceSession(str(self.path), providers=providers or ["CPUExecutionProvider"])
        raw = self.session.get_modelmeta().custom_metadata_map
        missing = [k for k in ("input_size", "heatmap_size", "mean", "std", "flip_pairs", "keypoints", "card")
                   if META_PREFIX + k not in raw]  # fmt: skip
        if missing:
            raise ValueError(
                f"{self.path} has no {', '.join(META_PREFIX + k for k in missing)} metadata: it was not written "
                "by `transpose export`; export it again"
            )
        meta = {k[len(META_PREFIX) :]: json.loads(v) for k, v in raw.items() if k.startswith(META_PREFIX)}
        self.card = meta["card"]
        self.image_size = tuple(meta["input_size"])  # (h, w)
        self.keypoints = list(meta["keypoints"])
        self.flip_pairs = [tuple(p) for p in meta["flip_pairs"]]
        self.mean = np.asarray(meta["mean"], np.float32)
        self.std = np.asarray(meta["std"], np.float32)
        (h, w), (hm_h, hm_w) = self.image_size, meta["heatmap_size"]
        self.codec = HeatmapCodec(input_size=(w, h), heatmap_size=(hm_w, hm_h))

    def normalise(self, crops_rgb: np.ndarray) -> np.ndarray:
        """uint8 [N, h, w, 3] RGB -> float32 [N, 3, h, w], /255 then mean/std (as `transpose.inference`)."""
        x = (crops_rgb.astype(np.float32) / 255.0 - self.mean) / self.std
        return np.ascontiguousarray(x.transpose(0, 3, 1, 2), dtype=np.float32)

    def heatmaps(self, crops_rgb: np.ndarray, flip: bool = True) -> np.ndarray:
        """Heatmaps [N, K, H, W] of uint8 crops [N, h, w, 3], flip-averaged when `flip`."""
        x = self.normalise(crops_rgb)
        n = len(x)
        if not flip:
            return self.session.run(["heatmaps"], {"image": x})[0]
        out = self.session.run(["heatmaps"], {"image": np.concatenate([x, x[..., ::-1]])})[0]
        order = list(range(out.shape[1]))
        for a, b in self.flip_pairs:
            order[a], order[b] = order[b], order[a]
        return 0.5 * (out[:n] + out[n:, order, :, ::-1])

    def predict(self, image_rgb: np.ndarray, boxes, flip: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """Keypoints [N, K, 2] in image pixels and their scores [N, K] for [x, y, w, h] boxes of one image."""
        centers, scales, crops = person_crops(image_rgb, boxes, self.image_size)
        if not len(crops):
            return np.zeros((0, len(self.keypoints), 2), np.float32), np.zeros((0, len(self.keypoints)), np.float32)
        heatmaps = self.heatmaps(crops, flip)
        if not np.isfinite(heatmaps).all():
            raise FloatingPointError(f"{self.path}: the model returned non-finite heatmaps for these crops")
        return self.codec.decode(heatmaps, centers, scales)
