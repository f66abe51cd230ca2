"""Small CNNs for CPU-sized images.

* `smallcnn` (8x8 `digits`): three 3x3 conv layers (32-64-128 channels, batch norm,
  ReLU), one 2x2 max-pool after the second, global average pool, linear; 94k
  parameters; ~97% test accuracy on digits in seconds.
* `convnet` (28x28 MNIST, Fashion-MNIST): two stride-2 3x3 conv layers (32-64
  channels, batch norm, ReLU; 28 -> 14 -> 7), then a 128-unit hidden layer with batch
  norm; 422k parameters but only 0.9M multiply-adds per image (smallcnn would need 29M
  at 28x28): an epoch of Fashion-MNIST takes seconds on 2 CPU cores. Measured figures
  are in docs/data.md and docs/speed.md."""

from __future__ import annotations

from torch import Tensor, nn

from models import register_model


def _conv(cin: int, cout: int, stride: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, stride, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


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


class ConvNet(nn.Module):
    def __init__(self, num_classes: int, in_channels: int = 1):
        super().__init__()
        # 28x28 -> 7x7 feature maps; the adaptive pool only matters for other input sizes
        self.features = nn.Sequential(*_conv(in_channels, 32, stride=2), *_conv(32, 64, stride=2),
                                      nn.AdaptiveAvgPool2d(7))
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(64 * 7 * 7, 128, bias=False), nn.BatchNorm1d(128),
                                  nn.ReLU(inplace=True), nn.Linear(128, num_classes))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))


@register_model("convnet", min_size=2)
def convnet(num_classes: int, in_channels: int = 1, imagenet_arch: bool = False) -> nn.Module:
    return ConvNet(num_classes, in_channels)
