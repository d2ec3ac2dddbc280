"""The DARTS nets: the search net (a MixedOp on every edge, architecture weights alpha for the normal
and the reduction cell) and the derived net (a genotype's cells, trained from scratch). Both are a
stem, `cells` cells (reduction cells at 1/3 and 2/3 of the depth, which halve the size and double the
channels) and a global-pool + Linear head, sized from the data like every net."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F
from typing_extensions import override

from modules.nas.cells import DerivedCell, SearchCell
from modules.nas.genotype import Genotype, derive_cell, edge_count
from modules.nas.operations import DEFAULT_OPERATIONS, build_operation

__all__ = ["DartsNet", "SearchNetwork", "check_space", "genotype_text", "reductions"]


def reductions(cells: int) -> tuple[int, ...]:
    """The indices of the reduction cells: at 1/3 and 2/3 of the depth (DARTS)."""
    return tuple(sorted({cells // 3, 2 * cells // 3})) if cells >= 3 else ()


def check_space(operations: Sequence[str], nodes: int, cells: int, channels: int) -> None:
    """One line for a search space that cannot be built or searched."""
    for name in operations:
        build_operation(name, 2, 1, affine=False)  # an unknown name raises, naming the known ones
    if len(set(operations)) != len(operations):
        raise ValueError(f"model.operations={list(operations)} names an operation twice")
    if not set(operations) - {"zero"}:
        raise ValueError(f"model.operations={list(operations)} has only the zero operation: add e.g. sep_conv_3x3")
    if nodes < 1:
        raise ValueError(f"model.nodes={nodes} must be >= 1 (intermediate nodes per cell)")
    if cells < 1 or channels < 1:
        raise ValueError(f"model.cells={cells} and model.channels={channels} must be >= 1")


def genotype_text(genotype: str) -> str:
    """A genotype as text: the string itself, or read from a search's run dir (or its results.json)."""
    path = Path(str(genotype))
    if path.is_dir():
        path = path / "results.json"
    if path.suffix == ".json" and path.is_file():
        record = json.loads(path.read_text()).get("darts", {})
        if "genotype" not in record:
            raise ValueError(f"model.genotype={genotype}: {path} holds no darts.genotype (not a DARTS search's run)")
        return record["genotype"]
    return str(genotype)


class _Stem(nn.Sequential):
    """3x3 conv + BatchNorm; returns the pair (s0, s1) both cells after it read."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out))

    @override
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # type: ignore[override]
        s = super().forward(x)
        return s, s


class _CellStep(nn.Module):
    """A derived cell in the Sequential: (s0, s1) -> (s1, cell(s0, s1))."""

    def __init__(self, cell: DerivedCell) -> None:
        super().__init__()
        self.cell = cell

    @override
    def forward(self, states: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        return states[1], self.cell(*states)


class _Head(nn.Module):
    """Global average pool of the last cell's output, dropout, Linear."""

    def __init__(self, channels: int, num_classes: int, dropout: float) -> None:
        super().__init__()
        self.dropout, self.linear = nn.Dropout(dropout), nn.Linear(channels, num_classes)

    @override
    def forward(self, states: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        return self.linear(self.dropout(F.adaptive_avg_pool2d(states[1], 1).flatten(1)))


def _plan(cells: int, channels: int, nodes: int, stem_multiplier: int):
    """Per cell: (C_prev_prev, C_prev, C, reduction, reduction_prev); then the last cell's channels."""
    c_pp = c_p = stem_multiplier * channels
    c, reduction_prev, plan = channels, False, []
    for i in range(cells):
        reduction = i in reductions(cells)
        if reduction:
            c *= 2
        plan.append((c_pp, c_p, c, reduction, reduction_prev))
        c_pp, c_p, reduction_prev = c_p, nodes * c, reduction
    return plan, c_p


class SearchNetwork(nn.Module):
    """The DARTS supernet. `alpha_normal` / `alpha_reduce` [edges, operations] are the architecture
    parameters (`arch_parameters`), trained on their own half of the training split; everything else
    is `weight_parameters`."""

    def __init__(
        self,
        input_shape: Sequence[int],
        num_classes: int,
        channels: int = 8,
        cells: int = 5,
        nodes: int = 4,
        operations: Sequence[str] = DEFAULT_OPERATIONS,
        stem_multiplier: int = 3,
    ) -> None:
        super().__init__()
        operations = list(operations)
        check_space(operations, nodes, cells, channels)
        self.input_shape, self.num_classes = tuple(input_shape), num_classes
        self.operations, self.nodes = operations, nodes
        plan, c_out = _plan(cells, channels, nodes, stem_multiplier)
        self.stem = nn.Sequential(
            nn.Conv2d(input_shape[0], stem_multiplier * channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(stem_multiplier * channels),
        )
        self.cells = nn.ModuleList(SearchCell(nodes, *row, operations) for row in plan)
        self.head = nn.Linear(c_out, num_classes)
        edges = edge_count(nodes)
        self.alpha_normal = nn.Parameter(1e-3 * torch.randn(edges, len(operations)))
        self.alpha_reduce = nn.Parameter(1e-3 * torch.randn(edges, len(operations)))

    def arch_parameters(self) -> list[nn.Parameter]:
        return [self.alpha_normal, self.alpha_reduce]

    def weight_parameters(self) -> list[nn.Parameter]:
        return [p for name, p in self.named_parameters() if not name.startswith("alpha_")]

    def arch_weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        """softmax(alpha) of the normal and the reduction cell, [edges, operations] each."""
        return F.softmax(self.alpha_normal, dim=-1), F.softmax(self.alpha_reduce, dim=-1)

    @override
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        normal, reduce = self.arch_weights()
        s0 = s1 = self.stem(x)
        for cell in self.cells:
            s0, s1 = s1, cell(s0, s1, reduce if cell.reduction else normal)
        return self.head(F.adaptive_avg_pool2d(s1, 1).flatten(1))

    def genotype(
        self, max_skips: int | None = None, weights: tuple[torch.Tensor, torch.Tensor] | None = None
    ) -> tuple[Genotype, int]:
        """The derived genotype (DARTS's top-2 rule, skips capped in the normal cell) and how many
        skip edges the cap replaced; from softmax `weights` (normal, reduce), by default the current."""
        normal, reduce = weights if weights is not None else (w.detach().cpu() for w in self.arch_weights())
        normal_cell, replaced = derive_cell(normal, self.operations, self.nodes, max_skips)
        reduce_cell, _ = derive_cell(reduce, self.operations, self.nodes)
        return Genotype(normal_cell, reduce_cell), replaced


class DartsNet(nn.Sequential):
    """The net a genotype describes, trained from scratch: stem, `cells` derived cells, head. `genotype`
    is its text (results.json's `darts.genotype`) or a search's run dir."""

    def __init__(
        self,
        input_shape: Sequence[int],
        num_classes: int,
        genotype: str | None,
        channels: int = 16,
        cells: int = 5,
        stem_multiplier: int = 3,
        dropout: float = 0.0,
    ) -> None:
        if genotype in (None, ""):
            raise ValueError(
                "model.genotype is not set: pass a search's genotype (results.json's darts.genotype) or its run "
                "dir, or run recipe=darts, which searches first"
            )
        parsed = Genotype.parse(genotype_text(genotype))
        if channels < 1 or cells < 1:
            raise ValueError(f"model.cells={cells} and model.channels={channels} must be >= 1")
        plan, c_out = _plan(cells, channels, parsed.nodes, stem_multiplier)
        blocks: list[nn.Module] = [_Stem(input_shape[0], stem_multiplier * channels)]
        blocks += [_CellStep(DerivedCell(parsed.cell(row[3]), *row)) for row in plan]
        blocks.append(_Head(c_out, num_classes, dropout))
        super().__init__(*blocks)
        self.input_shape, self.num_classes, self.genotype = tuple(input_shape), num_classes, parsed
