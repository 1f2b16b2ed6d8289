"""What both loaders share: their configuration, the batch they yield, and the torch-side step that turns a
batch into joints and Gaussian targets on the training device.

A batch (dict of tensors, B samples, K keypoints, input h x w):
    image    float32 [B, 3, h, w]   normalised crop (RGB, /255, ImageNet mean/std)
    kpt      float32 [B, K, 3]      joints in image pixels and visibility, as stored
    matrix   float32 [B, 2, 3]      image -> crop affine, flip included
    flip     float32 [B]            1 where the crop is mirrored (left/right channels must be swapped)
    geom     float32 [B, 10]        the stored geom.f32 (center, scale, offset, score, area, image size)
    center   float32 [B, 2], scale float32 [B, 2]   the crop's box after augmentation (validation: as stored)
    ids      int64   [B, 2]         image id, annotation id
    valid    float32 [B]            0 for padding samples (repeated to give every rank the same step count)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from dataops.augment import AugmentConfig, FixedDraw
from transpose.codec import HeatmapCodec
from transpose.geometry import affine_points_torch
from transpose.keypoints import KeypointSet
from transpose.models.transpose_net import IMAGENET_MEAN, IMAGENET_STD


@dataclass(frozen=True)
class LoaderConfig:
    input_size: tuple[int, int] = (256, 192)  # (h, w)
    batch_size: int = 32
    augment: AugmentConfig = AugmentConfig()
    shuffle: bool = True
    seed: int = 22
    workers: int = 2  # DataLoader workers (twin) or DALI threads
    fixed: FixedDraw | None = None  # same augmentation for every sample (tests)
    prefetch: int = 2  # DALI batches in flight
    cpu_warp: str = "opencv"  # DALI on CPU: "opencv" (fast) or "dali" (fn.warp_affine, as on the GPU)
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    drop_last: bool = False

    @property
    def aspect_ratio(self) -> float:
        return self.input_size[1] / self.input_size[0]


def crop_joints(batch: dict[str, torch.Tensor], keypoint_set: KeypointSet) -> tuple[torch.Tensor, torch.Tensor]:
    """Joints in crop pixels [B, K, 2] and visibility [B, K], left/right swapped for flipped samples."""
    joints = affine_points_torch(batch["kpt"][..., :2].double(), batch["matrix"].double()).float()
    visible = batch["kpt"][..., 2]
    flipped = batch["flip"] > 0.5
    if flipped.any():
        order = torch.tensor(keypoint_set.flip_index(), device=joints.device)
        joints = torch.where(flipped[:, None, None], joints[:, order], joints)
        visible = torch.where(flipped[:, None], visible[:, order], visible)
    return joints, visible


def make_targets(
    batch: dict[str, torch.Tensor], keypoint_set: KeypointSet, codec: HeatmapCodec
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gaussian targets [B, K, H, W], weights [B, K] and heatmap joints [B, K, 2] on the batch's device.

    The joints reach the crop through the batch's matrix (left/right swapped for flipped samples), the heatmap
    through the model's codec (`HeatmapCodec.targets`, the reference's joint affine at heatmap size). Padding
    samples get zero weights.
    """
    joints, visible = crop_joints(batch, keypoint_set)
    heatmaps, weights, joints_hm = codec.targets(joints, visible)
    if "valid" in batch:
        weights = weights * batch["valid"][:, None].to(weights)
    return heatmaps, weights, joints_hm
