"""A DARTS genotype: the discrete cell a search derives. Each intermediate node of a cell keeps two
incoming edges, each an (operation, input) pair; input 0 and 1 are the cell's two inputs (the outputs
of the cells two and one before it), input i + 2 is the cell's node i. A net has a normal cell and a
reduction cell (which halves the size and doubles the channels); the cell's output is all its nodes
concatenated.

Its text form, what results.json records and `model.genotype=` takes unquoted on a Hydra command line
(one node's edges joined by `+`, nodes by `/`, the two cells by `|`):

    normal:sep_conv_3x3@0+skip@1/sep_conv_3x3@0+sep_conv_3x3@2|reduce:max_pool_3x3@0+skip@1/...
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import torch

__all__ = ["CELLS", "Edge", "Genotype", "derive_cell", "edge_count", "random_genotype"]

CELLS = ("normal", "reduce")
Edge = tuple[str, int]  # (operation, input)
_EDGE = re.compile(r"^([a-z0-9_]+)@(\d+)$")


def edge_count(nodes: int) -> int:
    """The search cell's edges: node i has one from each of its i + 2 inputs."""
    return sum(i + 2 for i in range(nodes))


@dataclass(frozen=True)
class Genotype:
    """Two edges per node, for the normal and the reduction cell."""

    normal: tuple[tuple[Edge, Edge], ...]
    reduce: tuple[tuple[Edge, Edge], ...]

    @property
    def nodes(self) -> int:
        return len(self.normal)

    def cell(self, reduction: bool) -> tuple[tuple[Edge, Edge], ...]:
        return self.reduce if reduction else self.normal

    def __str__(self) -> str:
        def text(cell: tuple[tuple[Edge, Edge], ...]) -> str:
            return "/".join("+".join(f"{op}@{source}" for op, source in node) for node in cell)

        return f"normal:{text(self.normal)}|reduce:{text(self.reduce)}"

    def operations(self) -> set[str]:
        return {op for cell in (self.normal, self.reduce) for node in cell for op, _ in node}

    @classmethod
    def parse(cls, text: str, operations: Sequence[str] | None = None) -> Genotype:
        """The genotype written as `str()` writes it; a string that does not parse, or (given the search
        space's `operations`) names an operation outside it, is one line saying what is wrong."""
        usage = "model.genotype must read normal:OP@IN+OP@IN/...|reduce:OP@IN+OP@IN/... (results.json's darts.genotype)"
        pieces = str(text).strip().split("|")
        parts = dict(piece.split(":", 1) for piece in pieces if ":" in piece)
        if sorted(parts) != sorted(CELLS) or len(pieces) != 2:
            raise ValueError(f"{usage}; got {text!r}")
        cells = {}
        for name in CELLS:
            nodes = []
            for i, node in enumerate(parts[name].split("/")):
                edges = []
                for edge in node.split("+"):
                    match = _EDGE.match(edge.strip())
                    if not match:
                        raise ValueError(f"{usage}; {edge!r} in the {name} cell is not OP@INPUT")
                    op, source = match.group(1), int(match.group(2))
                    if source >= i + 2:
                        raise ValueError(
                            f"model.genotype: node {i} of the {name} cell reads input {source}, but only the "
                            f"cell's two inputs and nodes before it (0..{i + 1}) exist"
                        )
                    if op == "zero":
                        raise ValueError(f"model.genotype: {edge!r} in the {name} cell keeps a zero edge")
                    if operations is not None and op not in operations:
                        raise ValueError(
                            f"model.genotype: {op!r} in the {name} cell is not in the search space "
                            f"({', '.join(operations)})"
                        )
                    edges.append((op, source))
                if len(edges) != 2:
                    raise ValueError(f"model.genotype: node {i} of the {name} cell has {len(edges)} edges, not 2")
                nodes.append(tuple(edges))
            cells[name] = tuple(nodes)
        if len(cells["normal"]) != len(cells["reduce"]):
            raise ValueError("model.genotype: the normal and the reduction cell must have the same number of nodes")
        return cls(cells["normal"], cells["reduce"])


def derive_cell(
    weights: torch.Tensor, operations: Sequence[str], nodes: int, max_skips: int | None = None
) -> tuple[tuple[tuple[Edge, Edge], ...], int]:
    """(the cell, skips replaced): DARTS's rule on softmax weights [edges, ops]: each node keeps its two
    incoming edges whose strongest non-zero operation weighs most, each with that operation. With
    `max_skips`, while the cell holds more skip edges than that, the weakest skip edge takes its best
    operation other than zero and skip instead (P-DARTS's cap on skip connections)."""
    names = list(operations)
    zero = names.index("zero") if "zero" in names else None
    usable = torch.ones(len(names), dtype=torch.bool)
    if zero is not None:
        usable[zero] = False
    chosen: list[list[list]] = []  # per node: [op index, source, weight] x 2
    start = 0
    for i in range(nodes):
        block = weights[start : start + i + 2].masked_fill(~usable, -1.0)
        best, best_op = block.max(dim=1)
        sources = sorted(best.topk(2).indices.tolist(), key=lambda s: -float(best[s]))
        chosen.append([[int(best_op[s]), s, float(best[s])] for s in sources])
        start += i + 2
    replaced = 0
    if max_skips is not None and "skip" in names:
        skip = names.index("skip")
        other = usable.clone()
        other[skip] = False
        while sum(edge[0] == skip for node in chosen for edge in node) > max_skips:
            if not other.any():
                break
            node, edge = min(
                ((n, e) for n, node in enumerate(chosen) for e, edge in enumerate(node) if edge[0] == skip),
                key=lambda ne: chosen[ne[0]][ne[1]][2],
            )
            row = sum(j + 2 for j in range(node)) + chosen[node][edge][1]
            op = int(weights[row].masked_fill(~other, -1.0).argmax())
            chosen[node][edge] = [op, chosen[node][edge][1], float(weights[row, op])]
            replaced += 1
    cell = tuple(tuple((names[op], source) for op, source, _ in node) for node in chosen)
    return cell, replaced


def random_genotype(operations: Sequence[str], nodes: int, generator: torch.Generator) -> Genotype:
    """A genotype drawn uniformly from the space: for each node of each cell, two distinct inputs among
    those it may read and, for each, an operation other than zero (random search's sampler, Li and
    Talwalkar 2019)."""
    names = [op for op in operations if op != "zero"]

    def cell() -> tuple[tuple[Edge, Edge], ...]:
        chosen = []
        for i in range(nodes):
            sources = torch.randperm(i + 2, generator=generator)[:2].sort().values.tolist()
            ops = torch.randint(len(names), (2,), generator=generator).tolist()
            chosen.append(tuple((names[o], s) for o, s in zip(ops, sources, strict=True)))
        return tuple(chosen)

    return Genotype(cell(), cell())
