"""TransPose: CNN backbone -> 1x1 `reduce` -> Transformer encoder -> heatmap head (Yang et al., ICCV 2021).

The reference keeps the backbone's layers at the top of state_dict() (`conv1.*`, `layer1.*`, `stage3.*`),
next to `reduce`, `pos_embedding`, `global_encoder.*` and the head. TransPoseR and TransPoseH therefore
inherit their backbone class (ResNetS / HRNetS) instead of nesting it, so released checkpoints load with
strict key matching and no remapping. `TransPose` holds everything after the backbone.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor, nn

from transpose.codec import HeatmapCodec
from transpose.models.blocks import BN_MOMENTUM
from transpose.models.hrnet_s import HRNetS
from transpose.models.position_encoding import (
    POS_EMBEDDINGS,
    learnable_position_embedding,
    resample_learnable,
    sine_position_embedding,
)
from transpose.models.resnet_s import ResNetS
from transpose.models.transformer import TransformerEncoder

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class DataConfig:
    """What preprocessing and decoding need to know about a model (timm's pretrained_cfg, as data)."""

    image_size: tuple[int, int]  # (h, w) of the input crop
    heatmap_size: tuple[int, int]  # (h, w) of the output heatmaps
    num_keypoints: int
    heatmap_stride: int = 4  # input pixels per heatmap pixel
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def codec(self, sigma: float = 2.0) -> HeatmapCodec:
        """The heatmap codec of this model (targets, decoding, the crop <-> heatmap convention)."""
        return HeatmapCodec.from_data_config(self, sigma)


class TransPose(nn.Module):
    """Shared part of TransPose-R/H. The backbone class a subclass also inherits provides
    `forward_backbone`, `stride` and `size_divisor`; the subclass provides `forward_head`.

    forward(x) -> heatmaps [B, K, H/4, W/4]; forward(x, return_attention=True) -> (heatmaps, attentions)
    where attentions is a list with one head-averaged map [B, L, L] per encoder layer (L = tokens).
    """

    stride: int  # token stride of the backbone: 8 (ResNet-S) or 4 (HRNet-S)
    size_divisor: int  # input height and width must be multiples of this
    heatmap_stride = 4

    def _init_transformer(
        self,
        *,
        in_channels: int,
        d_model: int,
        nhead: int,
        dim_feedforward: int,
        num_layers: int,
        dropout: float,
        pos_embedding: str,
        image_size: tuple[int, int],
    ) -> None:
        if pos_embedding not in POS_EMBEDDINGS:
            raise ValueError(f"pos_embedding must be one of {POS_EMBEDDINGS}, got {pos_embedding!r}")
        self.image_size = check_image_size(image_size, self.size_divisor, type(self).__name__)
        self.token_grid = (self.image_size[0] // self.stride, self.image_size[1] // self.stride)
        self.d_model = d_model
        self.pos_embedding_type = pos_embedding
        self.reduce = nn.Conv2d(in_channels, d_model, 1, bias=False)
        if pos_embedding == "sine":  # frozen, but a Parameter as in the reference (it is in state_dict)
            table = sine_position_embedding(*self.token_grid, d_model)
            self.pos_embedding = nn.Parameter(table, requires_grad=False)
        elif pos_embedding == "learnable":
            self.pos_embedding = nn.Parameter(learnable_position_embedding(*self.token_grid, d_model))
        else:
            self.register_parameter("pos_embedding", None)
        self.global_encoder = TransformerEncoder(d_model, nhead, dim_feedforward, num_layers, dropout)

    @property
    def num_keypoints(self) -> int:
        return self.final_layer.out_channels

    @property
    def data_config(self) -> DataConfig:
        h, w = self.image_size
        return DataConfig(
            image_size=self.image_size,
            heatmap_size=(h // self.heatmap_stride, w // self.heatmap_stride),
            num_keypoints=self.num_keypoints,
            heatmap_stride=self.heatmap_stride,
        )

    def position_table(self, grid: tuple[int, int]) -> Tensor | None:
        """The [1, L, d] embedding for a token grid: stored, remade (sine) or interpolated (learnable)."""
        if self.pos_embedding is None:
            return None
        if grid == self.token_grid:
            table = self.pos_embedding
        elif self.pos_embedding_type == "sine":
            table = sine_position_embedding(*grid, self.d_model).to(self.pos_embedding)
        else:
            table = resample_learnable(self.pos_embedding, self.token_grid, grid)
        return table.transpose(0, 1)

    def forward_features(self, x: Tensor, return_attention: bool = False):
        """Backbone, reduce and encoder: returns the encoded map [B, d, h, w] (and the attention maps)."""
        check_input(x, self.size_divisor, type(self).__name__)
        feats = self.reduce(self.forward_backbone(x))
        b, d, h, w = feats.shape
        tokens = feats.flatten(2).transpose(1, 2)  # [B, d, h, w] -> [B, L, d], row-major tokens
        tokens, maps = self.global_encoder(tokens, self.position_table((h, w)), return_attention)
        feats = tokens.transpose(1, 2).reshape(b, d, h, w)
        return (feats, maps) if return_attention else feats

    def forward_head(self, feats: Tensor) -> Tensor:
        raise NotImplementedError

    def forward(self, x: Tensor, return_attention: bool = False):
        if return_attention:
            feats, maps = self.forward_features(x, return_attention=True)
            return self.forward_head(feats), maps
        return self.forward_head(self.forward_features(x))

    def reset_head(self, num_keypoints: int) -> None:
        """Replace the final 1x1 conv by a freshly initialised one for `num_keypoints` (transfer learning)."""
        old = self.final_layer
        self.final_layer = nn.Conv2d(old.in_channels, num_keypoints, kernel_size=1).to(old.weight)
        nn.init.normal_(self.final_layer.weight, std=0.001)
        nn.init.zeros_(self.final_layer.bias)

    def head_prefixes(self) -> tuple[str, ...]:
        """state_dict prefixes of the layer that `reset_head` replaces."""
        return ("final_layer.",)

    def init_reference_weights(self) -> None:
        """The reference's `init_weights` without an ImageNet file: every conv and deconv normal(0, 0.001)
        with zero bias, BatchNorm weight 1 / bias 0; the encoder keeps its xavier_uniform init.
        `load_pretrained_backbone` then overwrites the backbone when a file is given."""
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
                nn.init.normal_(m.weight, std=0.001)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)


class TransPoseR(TransPose, ResNetS):
    """TransPose-R: ResNet-S (1/8), encoder, then one 4x4 deconv (or bilinear x2) to 1/4 and a 1x1 conv."""

    def __init__(
        self,
        *,
        num_keypoints: int = 17,
        d_model: int = 256,
        nhead: int = 8,
        dim_feedforward: int = 1024,
        num_layers: int = 4,
        dropout: float = 0.1,
        pos_embedding: str = "sine",
        image_size: tuple[int, int] = (256, 192),
        resnet_layers: tuple[int, int] = (3, 4),
        base_width: int = 64,
        upsample: str = "deconv",
        deconv_channels: int = 256,
        reference_init: bool = True,
    ):
        ResNetS.__init__(self, layers=resnet_layers, base_width=base_width)
        self._init_transformer(
            in_channels=self.out_channels,
            d_model=d_model,
            nhead=nhead,
            dim_feedforward=dim_feedforward,
            num_layers=num_layers,
            dropout=dropout,
            pos_embedding=pos_embedding,
            image_size=image_size,
        )
        if upsample == "deconv":
            self.deconv_layers = nn.Sequential(
                nn.ConvTranspose2d(d_model, deconv_channels, kernel_size=4, stride=2, padding=1, bias=False),
                nn.BatchNorm2d(deconv_channels, momentum=BN_MOMENTUM),
                nn.ReLU(inplace=True),
            )
            head_in = deconv_channels
        elif upsample == "bilinear":
            self.deconv_layers = None
            head_in = d_model
        else:
            raise ValueError(f"upsample must be 'deconv' or 'bilinear', got {upsample!r}")
        self.final_layer = nn.Conv2d(head_in, num_keypoints, kernel_size=1)
        if reference_init:  # False keeps PyTorch's default (Kaiming-uniform) initialisation
            self.init_reference_weights()

    def forward_head(self, feats: Tensor) -> Tensor:
        if self.deconv_layers is not None:
            feats = self.deconv_layers(feats)
        else:
            feats = F.interpolate(feats, scale_factor=2, mode="bilinear", align_corners=False)
        return self.final_layer(feats)


class TransPoseH(TransPose, HRNetS):
    """TransPose-H: HRNet-S (1/4), encoder, then a 1x1 conv straight to heatmaps."""

    def __init__(
        self,
        *,
        num_keypoints: int = 17,
        width: int = 48,
        d_model: int = 96,
        nhead: int = 1,
        dim_feedforward: int = 192,
        num_layers: int = 4,
        dropout: float = 0.1,
        pos_embedding: str = "sine",
        image_size: tuple[int, int] = (256, 192),
    ):
        HRNetS.__init__(self, width=width)
        self._init_transformer(
            in_channels=self.out_channels,
            d_model=d_model,
            nhead=nhead,
            dim_feedforward=dim_feedforward,
            num_layers=num_layers,
            dropout=dropout,
            pos_embedding=pos_embedding,
            image_size=image_size,
        )
        self.final_layer = nn.Conv2d(d_model, num_keypoints, kernel_size=1)
        self.init_reference_weights()

    def forward_head(self, feats: Tensor) -> Tensor:
        return self.final_layer(feats)


def check_image_size(image_size, divisor: int, model_name: str) -> tuple[int, int]:
    """Validate an (h, w) input size against the backbone's divisor; returns it as a tuple of ints."""
    try:
        h, w = (int(v) for v in image_size)
    except (TypeError, ValueError):
        raise ValueError(f"image_size must be (height, width), got {image_size!r}") from None
    if h <= 0 or w <= 0 or h % divisor or w % divisor:
        raise ValueError(
            f"{model_name} needs an input height and width divisible by {divisor}, got {h}x{w}; "
            f"use e.g. {max(divisor, round(h / divisor) * divisor)}x{max(divisor, round(w / divisor) * divisor)}"
        )
    return h, w


def check_input(x: Tensor, divisor: int, model_name: str) -> None:
    if x.dim() != 4 or x.shape[1] != 3:
        raise ValueError(f"{model_name} expects images [B, 3, H, W], got shape {tuple(x.shape)}")
    check_image_size(x.shape[-2:], divisor, model_name)
