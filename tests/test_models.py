"""Every registered architecture: forward and backward at its smallest input size.
Found through the registry, so a new model is tested without a new test."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from models import MODELS, create_model, list_models


@pytest.mark.parametrize("name", list_models())
@pytest.mark.parametrize("in_channels", [1, 3])
def test_forward_backward(name, in_channels):
    torch.manual_seed(0)
    model = create_model(name, num_classes=7, in_channels=in_channels)
    size = max(MODELS[name].min_size, 8)
    x = torch.randn(4, in_channels, size, size)
    out = model(x)
    assert out.shape == (4, 7)
    out.logsumexp(1).mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_imagenet_stem_on_64x64():
    model = create_model("resnet18", num_classes=200, in_channels=3, imagenet_arch=True)
    assert model(torch.randn(2, 3, 64, 64)).shape == (2, 200)


def test_unknown_architecture_lists_choices():
    with pytest.raises(KeyError, match="resnet18"):
        create_model("alexnet", 10)


def test_last_linear_finds_a_nested_classifier():
    """The classifier inside a sub-module is returned with its own parent and attribute name, so
    replacing it (BE, FF) replaces the right layer (mutants: the parent path mangled)."""
    from unlearn.methods.common import accuracy, last_linear

    head = nn.Linear(4, 3)
    model = nn.Sequential(nn.Linear(2, 4), nn.Sequential(nn.ReLU(), nn.Sequential(nn.Identity(), head)))
    parent, name, layer = last_linear(model)  # "1.1.1": two levels down
    assert parent is model[1][1] and name == "1" and layer is head
    flat = nn.Sequential(nn.Flatten(), nn.Linear(2, 3))
    assert last_linear(flat)[0] is flat and last_linear(flat)[1] == "1"
    with pytest.raises(ValueError, match="^Sequential has no nn.Linear layer"):
        last_linear(nn.Sequential(nn.ReLU()))
    # the per-batch accuracy the loop logs, in percent
    logits = torch.tensor([[2.0, 1.0], [0.0, 3.0], [5.0, 1.0], [1.0, 0.0]])
    assert float(accuracy(logits, torch.tensor([0, 1, 1, 1]))) == 50.0


def test_from_checkpoint_rebuilds_the_architecture_stem_classes_and_weights():
    from models import from_checkpoint

    torch.manual_seed(0)
    saved = create_model("resnet18", num_classes=5, in_channels=3, imagenet_arch=True)
    ckpt = {"arch": "resnet18", "num_classes": 5, "imagenet_arch": True, "state_dict": saved.state_dict()}
    x = torch.randn(2, 3, 32, 32)
    for arch in (None, "vgg16_bn"):  # the checkpoint's own architecture wins over the caller's guess
        net = from_checkpoint(ckpt, in_channels=3, arch=arch).eval()
        assert net.stem[0].kernel_size == (7, 7)  # the ImageNet stem, not the CIFAR one
        assert torch.equal(net(x), saved.eval()(x))
    old = {k: v for k, v in ckpt.items() if k not in ("arch", "imagenet_arch")} | {
        "state_dict": create_model("smallcnn", 5, 1).state_dict()}  # a checkpoint that names no arch
    assert from_checkpoint(old, in_channels=1, arch="smallcnn").fc.out_features == 5
