"""The nets take any input shape and class count and produce logits of the right shape."""

from __future__ import annotations

import pytest
import torch

from modules.nets.convnet import ConvNet
from modules.nets.lenet import LeNet5
from modules.nets.mlp import MLP
from modules.nets.resnet import ResNet18

SHAPES = [(1, 8, 8), (3, 32, 32), (1, 28, 28)]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("net_cls", [MLP, LeNet5, ConvNet, ResNet18])
def test_logits_shape_and_gradients(net_cls, shape) -> None:
    net = net_cls(input_shape=shape, num_classes=7)
    x = torch.randn(4, *shape)
    logits = net(x)
    assert logits.shape == (4, 7)
    logits.sum().backward()
    assert all(p.grad is not None for p in net.parameters() if p.requires_grad)


def test_mlp_layers_follow_hidden_sizes() -> None:
    net = MLP(input_shape=(1, 8, 8), num_classes=10, hidden=[300, 100], batch_norm=True, dropout=0.1)
    linears = [m for m in net if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(64, 300), (300, 100), (100, 10)]
    assert sum(isinstance(m, torch.nn.BatchNorm1d) for m in net) == 2
    assert sum(isinstance(m, torch.nn.Dropout) for m in net) == 2


def test_resnet18_small_stem_keeps_resolution() -> None:
    net = ResNet18(input_shape=(1, 32, 32), num_classes=10)
    stem_out = net[0](torch.randn(2, 1, 32, 32))
    assert stem_out.shape == (2, 64, 32, 32)
    assert sum(p.numel() for p in net.parameters()) == pytest.approx(11.17e6, rel=0.01)


@pytest.mark.parametrize("bad", [{"hidden": [0]}, {"dropout": 1.0}])
def test_mlp_rejects_bad_knobs(bad) -> None:
    with pytest.raises(ValueError, match="model."):
        MLP(input_shape=(1, 8, 8), num_classes=10, **bad)
