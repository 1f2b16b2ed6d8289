"""Attention as explanation (paper Sec. 3.3, Eq. 4): dependency and affected areas of predicted keypoints.

For a keypoint predicted at token i, its dependency area in a layer is the row A[i, :] of that layer's
head-averaged attention (what the keypoint looks at), and the affected area of location j is the column
A[:, j] (which locations it influences). Entries below a threshold delta are cut: J = {j | A[i, j] >= delta}.
Figures follow the paper's Fig. 6/7: delta 0.00075 for TransPose-H and 0.01 for TransPose-R, maps upsampled
bilinearly by the stride to the crop, and a keypoint's token found by the reference's visualisation rule
(`HeatmapCodec.visual_pixel`: heatmap p -> input pixel p * 4 + 0.5, then // the token stride). Keypoints are
drawn where the codec decodes them in the crop.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from transpose.codec import HeatmapCodec
from transpose.figures import pyplot, save_figure
from transpose.keypoints import KeypointSet


def default_threshold(stride: int) -> float:
    """The paper's delta: 0.01 for 1/8 tokens (TransPose-R), 0.00075 for 1/4 tokens (TransPose-H)."""
    return 0.01 if stride >= 8 else 0.00075


@dataclass
class AttentionAreas:
    """Per layer and keypoint: dependency [layers, K, h, w] and affected [layers, K, h, w] token maps."""

    dependency: np.ndarray
    affected: np.ndarray
    keypoint_tokens: np.ndarray  # [K] token index of each keypoint
    token_grid: tuple[int, int]
    stride: int
    threshold: float

    def upsampled(self, which: str = "dependency") -> np.ndarray:
        """Maps bilinearly upsampled by the stride to the crop: [layers, K, h*stride, w*stride]."""
        maps = torch.from_numpy(getattr(self, which))
        return F.interpolate(maps, scale_factor=self.stride, mode="bilinear", align_corners=False).numpy()


def keypoint_tokens(
    keypoints_hm: np.ndarray, token_grid: tuple[int, int], stride: int, codec: HeatmapCodec
) -> np.ndarray:
    """Token index of each keypoint [K, 2] given in heatmap coordinates (the reference's visualisation rule)."""
    h, w = token_grid
    pixels = codec.visual_pixel(keypoints_hm)
    cols = np.clip((pixels[:, 0] // stride).astype(np.int64), 0, w - 1)
    rows = np.clip((pixels[:, 1] // stride).astype(np.int64), 0, h - 1)
    return rows * w + cols


def attention_areas(
    attentions: list[torch.Tensor],
    keypoints_hm: np.ndarray,
    token_grid: tuple[int, int],
    stride: int,
    threshold: float,
    codec: HeatmapCodec,
) -> AttentionAreas:
    """Areas of one sample from its per-layer maps (each [L, L] or [1, L, L])."""
    tokens = keypoint_tokens(keypoints_hm, token_grid, stride, codec)
    h, w = token_grid
    maps = torch.stack([a.reshape(a.shape[-2], a.shape[-1]) for a in attentions]).float().cpu().numpy()  # [N, L, L]
    dependency = maps[:, tokens, :]  # rows: what each keypoint attends to
    affected = maps[:, :, tokens].transpose(0, 2, 1)  # columns: who attends to each keypoint
    dependency = np.where(dependency >= threshold, dependency, 0.0).reshape(len(maps), len(tokens), h, w)
    affected = np.where(affected >= threshold, affected, 0.0).reshape(len(maps), len(tokens), h, w)
    return AttentionAreas(dependency, affected, tokens, token_grid, stride, threshold)


@torch.no_grad()
def attention_maps(model: torch.nn.Module, crop: torch.Tensor) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every layer's head-averaged attention of one normalised crop [3, h, w] of the model's input size.

    Returns (maps [layers, L, L] float32, keypoints [K, 2] in heatmap coordinates decoded with DARK, scores [K]);
    tokens are row-major on the model's token grid (h / stride, w / stride).
    """
    model.eval()
    device = next(model.parameters()).device
    heatmaps, attentions = model(crop[None].to(device), return_attention=True)
    coords_hm, scores = model.data_config.codec().decode_heatmap_coords(heatmaps.float().cpu().numpy())
    maps = torch.stack([a.reshape(a.shape[-2], a.shape[-1]) for a in attentions]).float().cpu().numpy()
    return maps, coords_hm[0], scores[0]


def explain_crop(model: torch.nn.Module, crop: torch.Tensor, threshold: float | None = None):
    """Run the attention path on one normalised crop [3, h, w] of the model's input size.

    Returns (areas, keypoints [K, 2] in crop pixels, scores [K]); keypoints are decoded with DARK.
    """
    maps, coords_hm, scores = attention_maps(model, crop)
    codec = model.data_config.codec()
    h, w = crop.shape[-2:]
    grid = (h // model.stride, w // model.stride)
    delta = default_threshold(model.stride) if threshold is None else threshold
    areas = attention_areas(list(torch.from_numpy(maps)), coords_hm, grid, model.stride, delta, codec)
    return areas, codec.heatmap_to_crop(coords_hm), scores


def draw_skeleton(
    ax, keypoints: np.ndarray, keypoint_set: KeypointSet, scores: np.ndarray | None = None, min_score: float = 0.0
) -> None:
    """Skeleton on a matplotlib axis: left limbs blue, right limbs orange, others green."""
    shown = np.ones(len(keypoints), bool) if scores is None else scores > min_score
    for a, b in keypoint_set.skeleton:
        if shown[a] and shown[b]:
            side = keypoint_set.names[a] + keypoint_set.names[b]
            color = "tab:blue" if "left" in side else "tab:orange" if "right" in side else "tab:green"
            ax.plot(*zip(keypoints[a], keypoints[b]), color=color, linewidth=1.5)
    ax.scatter(keypoints[shown, 0], keypoints[shown, 1], s=6, c="red", zorder=3)


def plot_attention_areas(
    crop_rgb: np.ndarray,
    keypoints_crop: np.ndarray,
    areas: AttentionAreas,
    keypoint_set: KeypointSet,
    out_path: str | Path,
    which: str = "dependency",
    scores: np.ndarray | None = None,
    title: str = "",
) -> Path:
    """The paper's Fig. 6/7: per layer (row) the crop with its skeleton, then one map per keypoint."""
    plt = pyplot()

    maps = areas.upsampled(which)
    layers, k = maps.shape[:2]
    fig, axes = plt.subplots(layers, k + 1, figsize=(1.25 * (k + 1), 1.7 * layers), squeeze=False)
    for layer in range(layers):
        ax = axes[layer, 0]
        ax.imshow(crop_rgb)
        draw_skeleton(ax, keypoints_crop, keypoint_set, scores)
        ax.set_ylabel(f"layer {layer + 1}", fontsize=8)
        for j in range(k):
            ax = axes[layer, j + 1]
            ax.imshow(crop_rgb, alpha=0.55)
            ax.imshow(maps[layer, j], cmap="jet", alpha=0.55, vmin=0.0, vmax=max(float(maps[layer, j].max()), 1e-12))
            ax.scatter(*keypoints_crop[j], s=18, marker="*", c="white", edgecolors="black", linewidths=0.4)
            if layer == 0:
                ax.set_title(keypoint_set.names[j].replace("_", "\n"), fontsize=7)
    height, width = crop_rgb.shape[:2]
    for ax in axes.flat:
        ax.set_xlim(-0.5, width - 0.5)
        ax.set_ylim(height - 0.5, -0.5)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(title or f"{which} areas (delta = {areas.threshold:g})", fontsize=10)
    return save_figure(fig, out_path)
