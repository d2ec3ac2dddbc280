"""Multi-layer perceptron over the flattened image."""

from __future__ import annotations

from collections.abc import Sequence
from math import prod

from torch import nn

from modules.nets.block_circulant import BlockCirculantLinear, check_block

__all__ = ["MLP"]


class MLP(nn.Sequential):
    """Flatten -> [Linear -> (BatchNorm1d) -> ReLU -> (Dropout)] per hidden width -> Linear head.

    `circulant_block=B` > 0 makes the hidden-to-hidden layers block-circulant (B x B circulant blocks, B
    times fewer weights, FFT products); `circulant_first=true` the input layer too. The head stays dense:
    it is the output layer that fine-tuning, distillation and the compression steps find."""

    def __init__(
        self,
        input_shape: Sequence[int],
        num_classes: int,
        hidden: Sequence[int] = (300, 100),
        batch_norm: bool = False,
        dropout: float = 0.0,
        circulant_block: int = 0,
        circulant_first: bool = False,
    ) -> None:
        if any(h <= 0 for h in hidden):
            raise ValueError(f"model.hidden={list(hidden)} must hold positive layer widths, e.g. [300,100]")
        if not 0 <= dropout < 1:
            raise ValueError(f"model.dropout={dropout} must be in [0, 1)")
        if circulant_block < 0:
            raise ValueError(f"model.circulant_block={circulant_block} must be 0 (dense) or a block size >= 2")
        layers: list[nn.Module] = [nn.Flatten()]
        width = prod(input_shape)
        for i, size in enumerate(hidden):
            if circulant_block and (i > 0 or circulant_first):
                check_block(circulant_block, width, size, "model.circulant_block")
                layers.append(BlockCirculantLinear(width, size, circulant_block))
            else:
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
