"""Named TransPose variants and `create_model`, in the manner of timm's registry (a flat dict, no magic).

Every builder takes the model's keyword arguments, so the paper's Table 7 depth variants are one argument
away: ``create_model("transpose_r_a4", num_layers=6)``.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable
from pathlib import Path

from transpose.models.checkpoint import load_pretrained_backbone, load_reference_checkpoint
from transpose.models.transpose_net import TransPose, TransPoseH, TransPoseR


def transpose_r_a3(**kwargs) -> TransPoseR:
    """TransPose-R-A3: ResNet-S, 3 encoder layers, d=256, 8 heads, FFN 1024. 5,195,345 params; 71.7 AP."""
    return TransPoseR(**{"num_layers": 3, **kwargs})


def transpose_r_a4(**kwargs) -> TransPoseR:
    """TransPose-R-A4: ResNet-S, 4 encoder layers, d=256, 8 heads, FFN 1024. 5,985,105 params; 72.6 AP."""
    return TransPoseR(**{"num_layers": 4, **kwargs})


def transpose_r_a3_star(**kwargs) -> TransPoseR:
    """TransPose-R-A3*: ResNet-S* (10 Bottlenecks: 3 in layer1, 7 in layer2), bilinear x2 instead of the
    deconv, 3 layers. 4,986,449 params (the paper's 5.0M); no reference key list exists for it."""
    return TransPoseR(**{"num_layers": 3, "resnet_layers": (3, 7), "upsample": "bilinear", **kwargs})


def transpose_r_tiny(**kwargs) -> TransPoseR:
    """Not in the paper: a ResNet-S at 1/4 width (16), 3 layers, d=96, 4 heads, FFN 192, for CPU training
    at small inputs (128x96). The project's embedded default; the paper's models are one name away."""
    defaults = {
        "base_width": 16,
        "resnet_layers": (2, 2),
        "d_model": 96,
        "nhead": 4,
        "dim_feedforward": 192,
        "num_layers": 3,
        "deconv_channels": 96,
        "image_size": (128, 96),
    }
    return TransPoseR(**{**defaults, **kwargs})


def transpose_h_s(**kwargs) -> TransPoseH:
    """TransPose-H-S: HRNet-S-W32, 4 layers, d=64, 1 head, FFN 128. 8,019,281 params; 74.2 AP."""
    return TransPoseH(**{"width": 32, "d_model": 64, "dim_feedforward": 128, "num_layers": 4, **kwargs})


def transpose_h_a4(**kwargs) -> TransPoseH:
    """TransPose-H-A4: HRNet-S-W48, 4 layers, d=96, 1 head, FFN 192. 17,306,129 params; 75.3 AP."""
    return TransPoseH(**{"width": 48, "d_model": 96, "dim_feedforward": 192, "num_layers": 4, **kwargs})


def transpose_h_a5(**kwargs) -> TransPoseH:
    """TransPose-H-A5 (Table 7): as H-A4 with 5 layers. 17,380,913 params."""
    return TransPoseH(**{"width": 48, "d_model": 96, "dim_feedforward": 192, "num_layers": 5, **kwargs})


def transpose_h_a6(**kwargs) -> TransPoseH:
    """TransPose-H-A6: HRNet-S-W48, 6 layers, d=96, 1 head, FFN 192. 17,455,697 params; 75.8 AP."""
    return TransPoseH(**{"width": 48, "d_model": 96, "dim_feedforward": 192, "num_layers": 6, **kwargs})


def transpose_h_w48_d64(**kwargs) -> TransPoseH:
    """Ablation (reference config TP_H_w48_..._d64_h128_enc4_mh1): HRNet-S-W48, d=64, FFN 128, 4 layers."""
    return TransPoseH(**{"width": 48, "d_model": 64, "dim_feedforward": 128, "num_layers": 4, **kwargs})


def transpose_h_w48_d192_mh2(**kwargs) -> TransPoseH:
    """Ablation: HRNet-S-W48, d=192, 2 heads, FFN 384, 4 layers."""
    return TransPoseH(**{"width": 48, "d_model": 192, "nhead": 2, "dim_feedforward": 384, "num_layers": 4, **kwargs})


MODELS: dict[str, Callable[..., TransPose]] = {
    fn.__name__: fn
    for fn in (
        transpose_r_a3,
        transpose_r_a4,
        transpose_r_a3_star,
        transpose_r_tiny,
        transpose_h_s,
        transpose_h_a4,
        transpose_h_a5,
        transpose_h_a6,
        transpose_h_w48_d64,
        transpose_h_w48_d192_mh2,
    )
}


def list_models(pattern: str = "*") -> list[str]:
    """Names of the registered variants matching a shell-style pattern, e.g. ``list_models("transpose_h_*")``."""
    return sorted(name for name in MODELS if fnmatch.fnmatch(name, pattern))


def create_model(
    name: str,
    num_keypoints: int = 17,
    pos_embedding: str = "sine",
    image_size: tuple[int, int] | None = None,
    pretrained: str | Path | None = None,
    pretrained_backbone: str | Path | None = None,
    **kwargs,
) -> TransPose:
    """Build a registered TransPose variant.

    Args:
        name: a name from `list_models()`.
        num_keypoints: heatmap channels (17 COCO, 16 MPII).
        pos_embedding: "sine" (paper default), "learnable" or "none".
        image_size: input (h, w); None keeps the variant's default (256x192 for the paper's models).
        pretrained: a local TransPose checkpoint (reference or ours) to load strictly. Nothing is downloaded.
        pretrained_backbone: a local ImageNet backbone file (ResNet-50 / HRNet keys) for the backbone only.
        **kwargs: any other model argument, e.g. ``num_layers=6`` or ``dropout=0.0``.

    >>> model = create_model("transpose_r_a4")
    >>> sum(p.numel() for p in model.parameters())
    5985105
    """
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; available: {', '.join(list_models())}")
    if pretrained is True or pretrained_backbone is True:
        raise ValueError("weights are never downloaded here: pass the path of a local checkpoint file")
    if image_size is not None:
        kwargs["image_size"] = tuple(image_size)
    model = MODELS[name](num_keypoints=num_keypoints, pos_embedding=pos_embedding, **kwargs)
    if pretrained_backbone is not None:
        load_pretrained_backbone(model, pretrained_backbone)
    if pretrained is not None:
        load_reference_checkpoint(model, pretrained)
    return model
