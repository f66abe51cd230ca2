"""A small CNN for the 8x8 `digits` images: three 3x3 conv layers (32-64-128
channels, batch norm, one max-pool), global average pool, linear. About 93k
parameters; reaches ~97% test accuracy on digits in seconds on a CPU."""

from __future__ import annotations

from torch import Tensor, nn

from models import register_model


def _conv(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


class SmallCNN(nn.Module):
    def __init__(self, num_classes: int, in_channels: int = 1):
        super().__init__()
        self.features = nn.Sequential(*_conv(in_channels, 32), *_conv(32, 64), nn.MaxPool2d(2), *_conv(64, 128))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(128, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.pool(self.features(x)).flatten(1))


@register_model("smallcnn", min_size=2)
def smallcnn(num_classes: int, in_channels: int = 1, imagenet_arch: bool = False) -> nn.Module:
    return SmallCNN(num_classes, in_channels)
