"""LeNet-5 (LeCun et al. 1998), sized for any input: 'same' padding keeps small images (8x8 digits)
valid, and the first fully connected layer is sized by tracing a dummy input."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["LeNet5"]

_ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh}


class LeNet5(nn.Sequential):
    """conv5x5(6) -> pool -> conv5x5(16) -> pool -> fc120 -> fc84 -> classes."""

    def __init__(self, input_shape: Sequence[int], num_classes: int, activation: str = "relu") -> None:
        if activation not in _ACTIVATIONS:
            raise ValueError(f"model.activation={activation!r}: choose one of {', '.join(_ACTIVATIONS)}")
        act = _ACTIVATIONS[activation]
        channels = input_shape[0]
        features = nn.Sequential(
            nn.Conv2d(channels, 6, 5, padding=2),
            act(),
            nn.MaxPool2d(2, ceil_mode=True),
            nn.Conv2d(6, 16, 5, padding=2),
            act(),
            nn.MaxPool2d(2, ceil_mode=True),
            nn.Flatten(),
        )
        with torch.no_grad():
            flat = features(torch.zeros(1, *input_shape)).shape[1]
        super().__init__(
            features,
            nn.Sequential(nn.Linear(flat, 120), act(), nn.Linear(120, 84), act()),
            nn.Linear(84, num_classes),
        )
        self.input_shape, self.num_classes = tuple(input_shape), num_classes
