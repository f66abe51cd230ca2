"""VGG-16 with batch norm (Simonyan and Zisserman 2015) in its CIFAR form: five
conv stages with max-pool, global average pool, one linear classifier."""

from __future__ import annotations

from torch import Tensor, nn

from models import register_model

VGG16 = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]


class VGG(nn.Module):
    def __init__(self, cfg: list, num_classes: int, in_channels: int):
        super().__init__()
        layers, cin = [], in_channels
        for v in cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                layers += [nn.Conv2d(cin, v, 3, padding=1, bias=False), nn.BatchNorm2d(v), nn.ReLU(inplace=True)]
                cin = v
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)  # 1x1 at 32x32; makes 64x64 inputs work too
        self.classifier = nn.Linear(cin, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.pool(self.features(x)).flatten(1))


@register_model("vgg16_bn", min_size=32)
def vgg16_bn(num_classes: int, in_channels: int = 3, imagenet_arch: bool = False) -> nn.Module:
    return VGG(VGG16, num_classes, in_channels)
