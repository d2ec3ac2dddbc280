"""Pictures of a DARTS search: the derived cells (inputs, nodes and the kept edges with their
operations) and the trajectory of softmax(alpha) on every edge over the search's epochs."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from modules.nas.genotype import CELLS, Genotype

__all__ = ["draw_genotype", "plot_alpha_trajectory"]


def _pyplot():
    import matplotlib  # imported here: only a finished search draws

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def draw_genotype(genotype: Genotype, path: Path) -> None:
    """Both cells, one above the other: c_{k-2} and c_{k-1} (the cell's inputs) on the left, the nodes
    left to right, each kept edge an arrow labelled with its operation, and the concatenated output."""
    plt = _pyplot()
    n = genotype.nodes
    figure, axes = plt.subplots(2, 1, figsize=(2.2 * n + 3, 7))
    places = {0: (0.0, 1.0), 1: (0.0, -1.0), **{i + 2: (i + 1.0, 0.7 * (-1) ** i) for i in range(n)}}
    output = (n + 1.0, 0.0)
    labels = {0: "c_{k-2}", 1: "c_{k-1}", **{i + 2: str(i) for i in range(n)}}
    for ax, name in zip(axes, CELLS, strict=True):
        for i, node in enumerate(genotype.cell(name == "reduce")):
            for k, (op, source) in enumerate(node):
                (x0, y0), (x1, y1) = places[source], places[i + 2]
                bend = 0.25 if k else -0.25
                arrow = {"arrowstyle": "-|>", "color": "0.35", "shrinkA": 12, "shrinkB": 12,
                         "connectionstyle": f"arc3,rad={bend}"}  # fmt: skip
                ax.annotate("", (x1, y1), (x0, y0), arrowprops=arrow)
                # the label at the middle of the arc (a quadratic Bezier curve through matplotlib's control point)
                mid = ((x0 + x1) / 2 + bend * (y1 - y0) / 2, (y0 + y1) / 2 - bend * (x1 - x0) / 2)
                ax.text(*mid, op, fontsize=7, ha="center", va="center",
                        bbox={"boxstyle": "round", "fc": "lightyellow", "ec": "0.7"})  # fmt: skip
            ax.annotate("", output, places[i + 2],
                        arrowprops={"arrowstyle": "-|>", "color": "0.75", "shrinkA": 12, "shrinkB": 14})  # fmt: skip
        for key, (x, y) in places.items():
            color = "lightblue" if key < 2 else "lightgreen"
            ax.text(x, y, labels[key], ha="center", va="center", fontsize=9, bbox={"boxstyle": "round", "fc": color})
        ax.text(*output, "c_{k}", ha="center", va="center", fontsize=9, bbox={"boxstyle": "round", "fc": "wheat"})
        ax.set_xlim(-0.6, n + 1.6)
        ax.set_ylim(-1.6, 1.6)
        ax.set_title(f"{name} cell")
        ax.axis("off")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)


def plot_alpha_trajectory(trajectory: torch.Tensor, operations: Sequence[str], nodes: int, path: Path) -> None:
    """softmax(alpha) per epoch, [epochs, 2 cells, edges, ops]: one panel per edge (rows: each cell's
    nodes; columns: the node's inputs), one line per operation."""
    plt = _pyplot()
    epochs = range(1, trajectory.shape[0] + 1)
    figure, axes = plt.subplots(2 * nodes, nodes + 1, figsize=(2.2 * (nodes + 1), 1.5 * 2 * nodes), squeeze=False)
    for c, name in enumerate(CELLS):
        edge = 0
        for i in range(nodes):
            for j in range(nodes + 1):
                ax = axes[c * nodes + i][j]
                if j >= i + 2:
                    ax.axis("off")
                    continue
                for o, op in enumerate(operations):
                    ax.plot(epochs, trajectory[:, c, edge, o].numpy(), label=op, linewidth=1)
                ax.set_title(f"{name} node {i} <- {j}", fontsize=7)
                ax.tick_params(labelsize=6)
                ax.set_ylim(0, 1)
                edge += 1
    handles, labels = axes[0][0].get_legend_handles_labels()
    figure.legend(handles, labels, loc="upper right", fontsize=7)
    figure.tight_layout(rect=(0, 0, 0.88, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=90)
    plt.close(figure)
