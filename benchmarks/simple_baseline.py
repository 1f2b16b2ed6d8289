"""SimpleBaseline-Res50 (Xiao et al., ECCV 2018), written out so the benchmark needs no torchvision."""

from __future__ import annotations

from torch import Tensor, nn


class _Bottleneck(nn.Module):
    """ResNet v1.5 Bottleneck (stride on the 3x3 conv), as in torchvision and the SimpleBaseline code."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        out = planes * self.expansion
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out)
        self.relu = nn.ReLU(inplace=True)
        self.downsample: nn.Module | None = None
        if stride != 1 or inplanes != out:
            self.downsample = nn.Sequential(nn.Conv2d(inplanes, out, 1, stride=stride, bias=False), nn.BatchNorm2d(out))

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.relu(self.bn2(self.conv2(y)))
        return self.relu(self.bn3(self.conv3(y)) + identity)


class SimpleBaselineRes50(nn.Module):
    """ResNet-50 without avgpool/fc, three 4x4/2 deconvs (256 ch, BN, ReLU), 1x1 conv: 256x192 -> 64x48."""

    def __init__(self, num_keypoints: int = 17, deconv_channels: int = 256) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False),
            nn.BatchNorm2d(64),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(3, stride=2, padding=1),
        )
        stages: list[nn.Module] = []
        inplanes = 64
        for planes, blocks, stride in ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)):
            layers = [_Bottleneck(inplanes, planes, stride)]
            inplanes = planes * _Bottleneck.expansion
            layers += [_Bottleneck(inplanes, planes) for _ in range(blocks - 1)]
            stages.append(nn.Sequential(*layers))
        self.stages = nn.Sequential(*stages)
        deconvs: list[nn.Module] = []
        for _ in range(3):
            deconvs += [
                nn.ConvTranspose2d(inplanes, deconv_channels, 4, stride=2, padding=1, bias=False),
                nn.BatchNorm2d(deconv_channels),
                nn.ReLU(inplace=True),
            ]
            inplanes = deconv_channels
        self.deconv_layers = nn.Sequential(*deconvs)
        self.final_layer = nn.Conv2d(deconv_channels, num_keypoints, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.final_layer(self.deconv_layers(self.stages(self.stem(x))))
