"""ResNet-S: the first two stages of ResNet-50, output stride 8 (TransPose paper, Table 1).

conv1 7x7/2 -> bn1 -> ReLU -> maxpool 3/2 -> layer1 (3 Bottlenecks, 256 ch) -> layer2 (4 Bottlenecks,
first stride 2, 512 ch). ResNet-S* (TransPose-R-A3*) deepens layer2 by passing `layers=(3, 7)`.
"""

from __future__ import annotations

from torch import Tensor, nn

from transpose.models.blocks import BN_MOMENTUM, Bottleneck, make_layer


class ResNetS(nn.Module):
    """Truncated ResNet with Bottleneck blocks; `forward` returns the 1/8 feature map."""

    stride = 8
    size_divisor = 8

    def __init__(self, layers: tuple[int, int] = (3, 4), base_width: int = 64):
        super().__init__()
        w = base_width  # 64 in ResNet-50; smaller values give the tiny variants that are not in the paper
        self.conv1 = nn.Conv2d(3, w, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(w, momentum=BN_MOMENTUM)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = make_layer(Bottleneck, w, w, layers[0])
        self.layer2 = make_layer(Bottleneck, w * Bottleneck.expansion, 2 * w, layers[1], stride=2)
        self.out_channels = 2 * w * Bottleneck.expansion

    def forward_backbone(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer2(self.layer1(x))

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_backbone(x)

    def backbone_prefixes(self) -> tuple[str, ...]:
        """Top-level state_dict prefixes that belong to the backbone (ImageNet-pretrainable)."""
        return ("conv1.", "bn1.", "layer1.", "layer2.")
