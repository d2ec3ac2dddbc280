"""DARTS cells. A cell reads the outputs of the two cells before it (s0, s1), preprocesses each to C
channels, and computes `nodes` intermediate nodes, node i the sum over its incoming edges; its output
is the nodes concatenated (nodes x C channels). A reduction cell's edges from s0 and s1 run at stride
2. In the search every edge is a `MixedOp` over all candidate operations; in a derived cell each node
keeps the two edges its genotype names."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from typing_extensions import override

from modules.nas.genotype import Edge
from modules.nas.operations import FactorizedReduce, ReLUConvBN, build_operation

__all__ = ["DerivedCell", "MixedOp", "SearchCell"]


class MixedOp(nn.Module):
    """An edge of the search: `sum_o softmax(alpha)_o * o(x)` over the candidate operations (the
    weights come in, one row of the net's architecture parameters)."""

    def __init__(self, channels: int, stride: int, operations: Sequence[str]) -> None:
        super().__init__()
        ops = []
        for name in operations:
            op = build_operation(name, channels, stride, affine=False)
            if "pool" in name:  # a pool's output is on another scale than the convs': normalize it (DARTS)
                op = nn.Sequential(op, nn.BatchNorm2d(channels, affine=False))
            ops.append(op)
        self.ops = nn.ModuleList(ops)

    @override
    def forward(self, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        return sum(w * op(x) for w, op in zip(weights, self.ops, strict=True))


def _preprocess(c_prev_prev: int, c_prev: int, channels: int, reduction_prev: bool, affine: bool) -> nn.ModuleList:
    """s0 (halved when the cell before was a reduction, so both inputs have one size) and s1 to C channels."""
    first = (
        FactorizedReduce(c_prev_prev, channels, affine)
        if reduction_prev
        else ReLUConvBN(c_prev_prev, channels, 1, 1, 0, affine)
    )
    return nn.ModuleList([first, ReLUConvBN(c_prev, channels, 1, 1, 0, affine)])


class SearchCell(nn.Module):
    """A cell of the search net: a MixedOp on every edge (node i has i + 2 incoming edges)."""

    def __init__(
        self,
        nodes: int,
        c_prev_prev: int,
        c_prev: int,
        channels: int,
        reduction: bool,
        reduction_prev: bool,
        operations: Sequence[str],
    ) -> None:
        super().__init__()
        self.nodes, self.reduction = nodes, reduction
        self.preprocess = _preprocess(c_prev_prev, c_prev, channels, reduction_prev, affine=False)
        self.edges = nn.ModuleList(
            MixedOp(channels, 2 if reduction and source < 2 else 1, operations)
            for i in range(nodes)
            for source in range(i + 2)
        )

    @override
    def forward(self, s0: torch.Tensor, s1: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        states = [self.preprocess[0](s0), self.preprocess[1](s1)]
        edge = 0
        for _ in range(self.nodes):
            states.append(sum(self.edges[edge + j](h, weights[edge + j]) for j, h in enumerate(states)))
            edge += len(states) - 1
        return torch.cat(states[2:], dim=1)


class DerivedCell(nn.Module):
    """A cell of the derived net: each node the sum of its genotype's two edges."""

    def __init__(
        self,
        cell: Sequence[tuple[Edge, Edge]],
        c_prev_prev: int,
        c_prev: int,
        channels: int,
        reduction: bool,
        reduction_prev: bool,
    ) -> None:
        super().__init__()
        self.reduction = reduction
        self.sources = [source for node in cell for _, source in node]
        self.preprocess = _preprocess(c_prev_prev, c_prev, channels, reduction_prev, affine=True)
        self.ops = nn.ModuleList(
            build_operation(op, channels, 2 if reduction and source < 2 else 1, affine=True)
            for node in cell
            for op, source in node
        )

    @override
    def forward(self, s0: torch.Tensor, s1: torch.Tensor) -> torch.Tensor:
        states = [self.preprocess[0](s0), self.preprocess[1](s1)]
        for i in range(len(self.sources) // 2):
            a, b = 2 * i, 2 * i + 1
            states.append(self.ops[a](states[self.sources[a]]) + self.ops[b](states[self.sources[b]]))
        return torch.cat(states[2:], dim=1)
