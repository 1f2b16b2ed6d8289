"""HRNet-S: the first three stages of HRNet, keeping only the 1/4 branch at the end (TransPose-H).

stem (two 3x3/2 convs) -> layer1 (4 Bottlenecks, 256 ch) -> transition1 -> stage2 (1 module, 2 branches)
-> transition2 -> stage3 (4 modules, 3 branches; the last module fuses into the 1/4 branch only).
Branch widths are (C, 2C, 4C) with C = 32 (HRNet-S-W32) or 48 (HRNet-S-W48). No stage 4.
Module names match the HRNet/TransPose reference so that its checkpoints load unchanged.
"""

from __future__ import annotations

from torch import Tensor, nn

from transpose.models.blocks import BN_MOMENTUM, BasicBlock, Bottleneck, make_layer


def _down(cin: int, cout: int, relu: bool) -> nn.Sequential:
    """3x3 stride-2 conv + BN (+ ReLU): one halving step of a fuse or transition path."""
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, 3, 2, 1, bias=False), nn.BatchNorm2d(cout)]
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class HighResolutionModule(nn.Module):
    """Parallel branches of BasicBlocks followed by all-to-all fusion (sum) across resolutions."""

    def __init__(self, channels: tuple[int, ...], num_blocks: int, multi_scale_output: bool = True):
        super().__init__()
        self.num_branches = len(channels)
        self.branches = nn.ModuleList(make_layer(BasicBlock, c, c, num_blocks) for c in channels)
        self.fuse_layers = nn.ModuleList(
            nn.ModuleList(self._fuse_path(channels, src, dst) for src in range(self.num_branches))
            for dst in range(self.num_branches if multi_scale_output else 1)
        )
        self.relu = nn.ReLU(inplace=True)  # y is always a fresh sum here

    @staticmethod
    def _fuse_path(channels: tuple[int, ...], src: int, dst: int) -> nn.Module | None:
        if src == dst:
            return None
        if src > dst:  # lower resolution -> 1x1 conv, BN, nearest upsampling
            return nn.Sequential(
                nn.Conv2d(channels[src], channels[dst], 1, 1, 0, bias=False),
                nn.BatchNorm2d(channels[dst]),
                nn.Upsample(scale_factor=2 ** (src - dst), mode="nearest"),
            )
        steps = dst - src  # higher resolution -> chain of 3x3/2 convs, ReLU between them
        return nn.Sequential(
            *(
                _down(channels[src], channels[dst] if k == steps - 1 else channels[src], relu=k < steps - 1)
                for k in range(steps)
            )
        )

    def forward(self, xs: list[Tensor]) -> list[Tensor]:
        xs = [branch(x) for branch, x in zip(self.branches, xs)]
        fused = []
        for dst, paths in enumerate(self.fuse_layers):
            y = xs[dst]
            for src, path in enumerate(paths):
                if path is not None:
                    y = y + path(xs[src])
            fused.append(self.relu(y))
        return fused


class HRNetS(nn.Module):
    """HRNet truncated after stage 3; `forward` returns the 1/4 branch, `width` channels."""

    stride = 4
    size_divisor = 16  # the 1/16 branch must upsample back exactly onto the 1/4 grid

    def __init__(self, width: int = 48, stage2_modules: int = 1, stage3_modules: int = 4, num_blocks: int = 4):
        super().__init__()
        c2 = (width, 2 * width)
        c3 = (width, 2 * width, 4 * width)
        self.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64, momentum=BN_MOMENTUM)
        self.conv2 = nn.Conv2d(64, 64, kernel_size=3, stride=2, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(64, momentum=BN_MOMENTUM)
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = make_layer(Bottleneck, 64, 64, 4)
        stem_out = 64 * Bottleneck.expansion
        # transition1: same-resolution 3x3 conv for branch 0, a 3x3/2 conv for the new branch 1
        self.transition1 = nn.ModuleList(
            [
                nn.Sequential(
                    nn.Conv2d(stem_out, c2[0], 3, 1, 1, bias=False), nn.BatchNorm2d(c2[0]), nn.ReLU(inplace=True)
                ),
                nn.Sequential(_down(stem_out, c2[1], relu=True)),
            ]
        )
        self.stage2 = nn.Sequential(*(HighResolutionModule(c2, num_blocks) for _ in range(stage2_modules)))
        # transition2: existing branches pass through, a new 1/16 branch is made from the 1/8 one
        self.transition2 = nn.ModuleList([None, None, nn.Sequential(_down(c2[1], c3[2], relu=True))])
        self.stage3 = nn.Sequential(
            *(
                HighResolutionModule(c3, num_blocks, multi_scale_output=i < stage3_modules - 1)
                for i in range(stage3_modules)
            )
        )
        self.out_channels = width

    def forward_backbone(self, x: Tensor) -> Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.relu(self.bn2(self.conv2(x)))
        x = self.layer1(x)
        ys = self.stage2([t(x) for t in self.transition1])
        xs = [ys[0], ys[1], self.transition2[2](ys[1])]
        return self.stage3(xs)[0]

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_backbone(x)

    def backbone_prefixes(self) -> tuple[str, ...]:
        """Top-level state_dict prefixes that belong to the backbone (ImageNet-pretrainable)."""
        return ("conv1.", "bn1.", "conv2.", "bn2.", "layer1.", "transition1.", "stage2.", "transition2.", "stage3.")
