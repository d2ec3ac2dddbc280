"""Multi-layer perceptron over the flattened image."""

from __future__ import annotations

from collections.abc import Sequence
from math import prod

from torch import nn

__all__ = ["MLP"]


class MLP(nn.Sequential):
    """Flatten -> [Linear -> (BatchNorm1d) -> ReLU -> (Dropout)] per hidden width -> Linear head."""

    def __init__(
        self,
        input_shape: Sequence[int],
        num_classes: int,
        hidden: Sequence[int] = (300, 100),
        batch_norm: bool = False,
        dropout: float = 0.0,
    ) -> None:
        if any(h <= 0 for h in hidden):
            raise ValueError(f"model.hidden={list(hidden)} must hold positive layer widths, e.g. [300,100]")
        if not 0 <= dropout < 1:
            raise ValueError(f"model.dropout={dropout} must be in [0, 1)")
        layers: list[nn.Module] = [nn.Flatten()]
        width = prod(input_shape)
        for size in hidden:
            layers.append(nn.Linear(width, size))
            if batch_norm:
                layers.append(nn.BatchNorm1d(size))
            layers.append(nn.ReLU())
            if dropout:
                layers.append(nn.Dropout(dropout))
            width = size
        layers.append(nn.Linear(width, num_classes))
        super().__init__(*layers)
        self.input_shape, self.num_classes = tuple(input_shape), num_classes
