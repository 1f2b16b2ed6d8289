"""A grid of loader crops with their joints, to see what training sees."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from dataops.loaders.common import crop_joints
from transpose.figures import pyplot, save_figure
from transpose.keypoints import KeypointSet


def plot_batch(
    batch: dict[str, torch.Tensor],
    keypoint_set: KeypointSet,
    out_path: str | Path,
    mean,
    std,
    columns: int = 6,
    title: str = "",
) -> Path:
    """Save the batch's crops (denormalised) with joints in crop coordinates, left blue / right orange."""
    plt = pyplot()

    from transpose.explain import draw_skeleton

    joints, visible = crop_joints(batch, keypoint_set)
    images = batch["image"].permute(0, 2, 3, 1).cpu().numpy() * np.asarray(std) + np.asarray(mean)
    n = images.shape[0]
    rows = -(-n // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(1.9 * columns, 2.5 * rows), squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i >= n:
            continue
        ax.imshow(np.clip(images[i], 0, 1))
        draw_skeleton(ax, joints[i].cpu().numpy(), keypoint_set, visible[i].cpu().numpy())
        flip = "flipped" if batch["flip"][i] > 0.5 else ""
        ax.set_title(f"id {int(batch['ids'][i, 0])} {flip}", fontsize=7)
        ax.set_xlim(-0.5, images.shape[2] - 0.5)
        ax.set_ylim(images.shape[1] - 0.5, -0.5)
    if title:
        fig.suptitle(title, fontsize=9)
    return save_figure(fig, out_path, dpi=100)
