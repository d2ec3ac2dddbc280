"""The candidate operations of a DARTS edge (Liu, Simonyan, Yang, ICLR 2019), by name: what a mixed
operation weighs during the search and what a derived cell is built of. Every operation maps C
channels to C channels, halving the size when `stride` is 2 (a reduction cell's edges from its inputs).
`affine=False` during the search, as DARTS: BatchNorm's scale and shift would let an operation's
output scale stand in for its architecture weight."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from typing_extensions import override

__all__ = ["DEFAULT_OPERATIONS", "OPERATIONS", "FactorizedReduce", "ReLUConvBN", "Zero", "build_operation"]


class Zero(nn.Module):
    """The `zero` operation: no edge. Kept in the search so an edge can learn to carry nothing."""

    def __init__(self, stride: int) -> None:
        super().__init__()
        self.stride = stride

    @override
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, :, :: self.stride, :: self.stride] * 0.0


class ReLUConvBN(nn.Sequential):
    """ReLU, a k x k convolution, BatchNorm: a cell's input preprocessing."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, padding: int, affine: bool) -> None:
        super().__init__(
            nn.ReLU(),
            nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=padding, bias=False),
            nn.BatchNorm2d(c_out, affine=affine),
        )


class FactorizedReduce(nn.Module):
    """Halve the size without losing half the pixels: two stride-2 1x1 convolutions, the second on the
    input shifted by one pixel, concatenated (DARTS's skip edge in a reduction cell)."""

    def __init__(self, c_in: int, c_out: int, affine: bool) -> None:
        super().__init__()
        self.relu = nn.ReLU()
        self.even = nn.Conv2d(c_in, c_out // 2, 1, stride=2, bias=False)
        self.odd = nn.Conv2d(c_in, c_out - c_out // 2, 1, stride=2, bias=False)
        self.bn = nn.BatchNorm2d(c_out, affine=affine)

    @override
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(x)
        shifted = nn.functional.pad(x[:, :, 1:, 1:], (0, 1, 0, 1))  # odd sizes: both halves round up alike
        return self.bn(torch.cat([self.even(x), self.odd(shifted)], dim=1))


def _separable(c: int, kernel: int, stride: int, dilation: int, affine: bool) -> list[nn.Module]:
    """ReLU, a depthwise k x k (dilated) convolution, a pointwise 1x1 convolution, BatchNorm."""
    padding = dilation * (kernel - 1) // 2
    return [
        nn.ReLU(),
        nn.Conv2d(c, c, kernel, stride=stride, padding=padding, dilation=dilation, groups=c, bias=False),
        nn.Conv2d(c, c, 1, bias=False),
        nn.BatchNorm2d(c, affine=affine),
    ]


def _pool(kind: type[nn.Module], stride: int) -> nn.Module:
    return nn.MaxPool2d(3, stride, 1) if kind is nn.MaxPool2d else nn.AvgPool2d(3, stride, 1, count_include_pad=False)


OPERATIONS: dict[str, Callable[[int, int, bool], nn.Module]] = {
    "zero": lambda c, stride, affine: Zero(stride),
    "skip": lambda c, stride, affine: nn.Identity() if stride == 1 else FactorizedReduce(c, c, affine),
    # a separable conv is applied twice (the second at stride 1), as in DARTS
    "sep_conv_3x3": lambda c, stride, affine: nn.Sequential(
        *_separable(c, 3, stride, 1, affine), *_separable(c, 3, 1, 1, affine)
    ),
    "sep_conv_5x5": lambda c, stride, affine: nn.Sequential(
        *_separable(c, 5, stride, 1, affine), *_separable(c, 5, 1, 1, affine)
    ),
    "dil_conv_3x3": lambda c, stride, affine: nn.Sequential(*_separable(c, 3, stride, 2, affine)),
    "dil_conv_5x5": lambda c, stride, affine: nn.Sequential(*_separable(c, 5, stride, 2, affine)),
    "max_pool_3x3": lambda c, stride, affine: _pool(nn.MaxPool2d, stride),
    "avg_pool_3x3": lambda c, stride, affine: _pool(nn.AvgPool2d, stride),
    "conv_3x3": lambda c, stride, affine: ReLUConvBN(c, c, 3, stride, 1, affine),
}

# DARTS's space, as the issue and the paper give it (dil_conv_5x5 and conv_3x3 are there to choose)
DEFAULT_OPERATIONS = (
    "zero",
    "skip",
    "sep_conv_3x3",
    "sep_conv_5x5",
    "dil_conv_3x3",
    "max_pool_3x3",
    "avg_pool_3x3",
)


def build_operation(name: str, channels: int, stride: int, affine: bool) -> nn.Module:
    """The operation `name` on `channels` channels; an unknown name is one line naming the known ones."""
    if name not in OPERATIONS:
        raise ValueError(f"unknown DARTS operation {name!r}: use one of {', '.join(OPERATIONS)}")
    return OPERATIONS[name](channels, stride, affine)
