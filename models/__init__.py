"""Model registry: `@register_model` next to each builder, `create_model(name, ...)` to build.

A builder takes (num_classes, in_channels, imagenet_arch) and returns an
nn.Module that maps normalised images to logits. `min_size` is the smallest
square input the network accepts; the registry test feeds every model a batch
of that size, so a new model is tested without a new test.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn


@dataclass(frozen=True)
class ModelEntry:
    build: Callable[..., nn.Module]
    min_size: int


MODELS: dict[str, ModelEntry] = {}


def register_model(name: str, min_size: int = 8):
    def wrap(fn):
        if name in MODELS:
            raise ValueError(f"model {name!r} registered twice")
        MODELS[name] = ModelEntry(fn, min_size)
        return fn
    return wrap


def list_models() -> list[str]:
    return sorted(MODELS)


def create_model(name: str, num_classes: int, in_channels: int = 3, imagenet_arch: bool = False) -> nn.Module:
    if name not in MODELS:
        raise KeyError(f"unknown architecture {name!r}; choices: {', '.join(list_models())}")
    return MODELS[name].build(num_classes=num_classes, in_channels=in_channels, imagenet_arch=imagenet_arch)


def from_checkpoint(ckpt: dict, in_channels: int, arch: str | None = None) -> nn.Module:
    """The model a checkpoint holds: its architecture (`arch` where the checkpoint names none), its
    classes, its ImageNet stem or not, and its weights (on the CPU; move it where it runs)."""
    net = create_model(ckpt.get("arch") or arch, ckpt["num_classes"], in_channels, ckpt.get("imagenet_arch", False))
    net.load_state_dict(ckpt["state_dict"])
    return net


from models import resnet, small_cnn, vgg  # noqa: E402,F401  (registers the models)
