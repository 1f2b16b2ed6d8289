"""Box -> center/scale and the unbiased (DARK/UDP) affine of the reference, in numpy and torch.

Conventions (spec "Data, targets and augmentation"):
    * sizes are (w, h) in this module, like OpenCV; center/scale are (x, y) pairs; pixel_std = 200;
    * center = (x + (w-1)/2, y + (h-1)/2); the box is widened or heightened to the output aspect ratio
      and scale = (w, h) / 200 * 1.25 (MPII uses a square scale and no widening);
    * only scale[0] * 200 (the width) sets the crop; the height follows from the output aspect ratio;
    * the affine is a similarity: centre -> ((W-1)/2, (H-1)/2), with factor (W-1) / (scale_w*200 - 1),
      and the source direction turned by +rot degrees. A point at integer pixel (x, y) is the pixel centre.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # torch only for the *_torch functions: the numpy ones import without it
    import torch

PIXEL_STD = 200.0


def box_to_center_scale(
    box, aspect_ratio: float, padding: float = 1.25, pixel_std: float = PIXEL_STD
) -> tuple[np.ndarray, np.ndarray]:
    """[x, y, w, h] -> (center (2,), scale (2,)), both float32, for an output of aspect ratio w/h."""
    x, y, w, h = (float(v) for v in box[:4])
    center = np.array([x + (w - 1) * 0.5, y + (h - 1) * 0.5], dtype=np.float32)
    if w > aspect_ratio * h:
        h = w / aspect_ratio
    elif w < aspect_ratio * h:
        w = h * aspect_ratio
    scale = np.array([w / pixel_std, h / pixel_std], dtype=np.float32) * padding
    return center, scale


def clean_box(box, image_width: int, image_height: int) -> np.ndarray | None:
    """The reference's box cleaning: returns [x1, y1, w, h] inside the image, or None if it is empty.

    x1 = max(0, x), x2 = min(W-1, x1 + max(0, w-1)): a box with negative x is shifted, not cut.
    """
    x, y, w, h = (float(v) for v in box[:4])
    x1, y1 = max(0.0, x), max(0.0, y)
    x2 = min(image_width - 1.0, x1 + max(0.0, w - 1))
    y2 = min(image_height - 1.0, y1 + max(0.0, h - 1))
    if w * h <= 0 or x2 < x1 or y2 < y1:
        return None
    return np.array([x1, y1, x2 - x1, y2 - y1], dtype=np.float32)


def get_affine_transform(center, scale, rot: float, output_size, inv: bool = False) -> np.ndarray:
    """2x3 float64 matrix mapping image pixels to the output crop (or back with inv=True).

    output_size is (w, h). Equal to the reference's three-point construction with (size-1) directions.
    """
    src_w = float(scale[0]) * PIXEL_STD
    dst_w, dst_h = float(output_size[0]), float(output_size[1])
    factor = (dst_w - 1) / (src_w - 1)
    theta = np.deg2rad(rot)
    cs, sn = np.cos(theta), np.sin(theta)
    linear = factor * np.array([[cs, sn], [-sn, cs]])  # factor * R(-rot): undoes the +rot of the source
    dst_center = np.array([(dst_w - 1) * 0.5, (dst_h - 1) * 0.5])
    center = np.asarray(center, dtype=np.float64)
    if inv:
        inverse = linear.T / factor**2
        return np.hstack([inverse, (center - inverse @ dst_center)[:, None]])
    return np.hstack([linear, (dst_center - linear @ center)[:, None]])


def affine_points(points, matrix) -> np.ndarray:
    """Apply a 2x3 matrix to points [..., 2]."""
    points = np.asarray(points, dtype=np.float64)
    matrix = np.asarray(matrix, dtype=np.float64)
    return points @ matrix[:, :2].T + matrix[:, 2]


def transform_preds(coords, center, scale, output_size) -> np.ndarray:
    """Map heatmap coordinates [K, 2] of one instance back to the image (inverse heatmap-size affine)."""
    return affine_points(coords, get_affine_transform(center, scale, 0.0, output_size, inv=True))


def flip_joints(joints, visible, image_width: int, flip_pairs) -> tuple[np.ndarray, np.ndarray]:
    """Mirror joints [K, 2] about the image (x -> W-1-x) and swap left/right pairs; unlabelled joints
    become (0, 0) as in the reference (joints * vis)."""
    joints = np.array(joints, dtype=np.float32, copy=True)
    visible = np.array(visible, dtype=np.float32, copy=True)
    joints[:, 0] = image_width - 1 - joints[:, 0]
    for a, b in flip_pairs:
        joints[[a, b]] = joints[[b, a]]
        visible[[a, b]] = visible[[b, a]]
    return joints * (visible[:, None] > 0), visible


def get_affine_transform_torch(center, scale, rot, output_size) -> torch.Tensor:
    """Batched `get_affine_transform`: center [B, 2], scale [B, 2], rot [B] (degrees) -> [B, 2, 3].

    Same maths as the numpy version, for building crops and joint targets on the training device.
    """
    import torch

    center = torch.as_tensor(center, dtype=torch.float64)
    scale = torch.as_tensor(scale, dtype=torch.float64, device=center.device)
    rot = torch.as_tensor(rot, dtype=torch.float64, device=center.device)
    dst_w, dst_h = float(output_size[0]), float(output_size[1])
    factor = (dst_w - 1) / (scale[:, 0] * PIXEL_STD - 1)
    theta = torch.deg2rad(rot)
    cs, sn = torch.cos(theta) * factor, torch.sin(theta) * factor
    linear = torch.stack([torch.stack([cs, sn], -1), torch.stack([-sn, cs], -1)], -2)  # [B, 2, 2]
    dst_center = center.new_tensor([(dst_w - 1) * 0.5, (dst_h - 1) * 0.5])
    shift = dst_center - (linear @ center[:, :, None])[..., 0]
    return torch.cat([linear, shift[:, :, None]], dim=2)


def affine_points_torch(points: torch.Tensor, matrix: torch.Tensor) -> torch.Tensor:
    """points [B, K, 2], matrix [B, 2, 3] -> [B, K, 2]."""

    matrix = matrix.to(points.dtype)
    return points @ matrix[:, :, :2].transpose(1, 2) + matrix[:, None, :, 2]
