"""SVD low-rank factorization: at `epoch`, each Linear `W (m x n)` becomes two Linear layers through a
rank-k bottleneck (`k(m+n)` weights instead of `mn`), each Conv2d a kxk conv with k filters then a
1x1 conv (channel decomposition), and an LSTM's input and recurrent matrices `W ~ A B` each, the LSTM
then computing through the factors (modules/nets/lowrank_lstm.py); training then goes on,
fine-tuning the factors.

The rank is set one of three ways: `rank` (the same k everywhere), `energy` (the smallest k keeping
that share of the squared singular values) or `param_ratio` (k so the layer keeps that share of its
weights), for each matrix. Matrices where factoring would not save weights are left alone, and so is
the classifier head unless `include_head`. Recurrent matrices of other layers (an LSTMP's projection,
the gate-shared LSTM's, which computes in its own loop) are left dense; the report names them."""

from __future__ import annotations

import math
from typing import Any

import lightning.pytorch as pl
import torch
from torch import nn
from typing_extensions import override

from callbacks.step import CompressionStep, Stage
from callbacks.surgery.folding import snapshot
from callbacks.surgery.structure import applied, factored, rebuild_optimizers, record, set_module
from callbacks.surgery.weights import LAYERS, weight_targets
from modules.nets import output_layer
from modules.nets.lowrank_lstm import FACTORS, MATRICES

__all__ = [
    "FACTORABLE",
    "LowRankFactorization",
    "energy_rank",
    "left_dense",
    "matrices",
    "matrix_shape",
    "max_useful_rank",
]

FACTORABLE = (nn.Linear, nn.Conv2d)


def matrix_shape(layer: nn.Module) -> tuple[int, int]:
    """(m, n) of the weight as a matrix: outputs x (inputs * kernel area)."""
    return layer.weight.shape[0], layer.weight[0].numel()


def matrices(layer: nn.Module) -> dict[str, torch.Tensor]:
    """The matrices this step factors in `layer`, by name: `weight` (as [m, n]) of a Linear / Conv2d,
    the input and recurrent matrices (`weight_ih_l0`, `weight_hh_l0`, ...) of a batch-first, one-way
    nn.LSTM with biases (the form LowRankLSTM computes); none of any other layer."""
    if isinstance(layer, FACTORABLE):
        return (
            {"weight": layer.weight.detach().reshape(matrix_shape(layer))} if getattr(layer, "groups", 1) == 1 else {}
        )
    if isinstance(layer, nn.LSTM) and layer.batch_first and layer.bias and not layer.bidirectional:
        return {
            f"{matrix}_l{k}": getattr(layer, f"{matrix}_l{k}").detach()
            for k in range(layer.num_layers)
            for matrix in MATRICES
        }
    return {}


def left_dense(net: nn.Module) -> list[str]:
    """The recurrent matrices of `net` that this step leaves unfactored (e.g. `lstm.weight_hr_l0`)."""
    return [
        label
        for label, module, tensor in weight_targets(net)
        if not isinstance(module, LAYERS) and not tensor.endswith(FACTORS)
    ]


def max_useful_rank(layer: nn.Module | torch.Tensor) -> int:
    """The largest k with k(m+n) < mn: beyond it the two factors hold more weights than the layer."""
    m, n = layer.shape if isinstance(layer, torch.Tensor) else matrix_shape(layer)
    return min(m, n, math.ceil(m * n / (m + n)) - 1)


def energy_rank(singular_values: torch.Tensor, energy: float) -> int:
    """Smallest k whose top-k squared singular values hold `energy` of the total."""
    power = singular_values.double() ** 2
    kept = torch.cumsum(power, 0) / power.sum()
    return int(torch.searchsorted(kept, torch.tensor(energy, dtype=kept.dtype)).item()) + 1


class LowRankFactorization(CompressionStep):
    """Factor the net's Linear / Conv2d layers by truncated SVD at the start of epoch `epoch`."""

    step = "svd"
    stage = Stage.STRUCTURE
    order_in_stage = 1  # after hidden-node pruning: factor the layers that remain
    order_reason = "factoring a pruned matrix makes it dense again"
    changes_shapes = True

    def __init__(
        self,
        epoch: int = 10,
        rank: int | None = None,
        energy: float | None = None,
        param_ratio: float | None = None,
        include_head: bool = False,
    ) -> None:
        given = [
            name
            for name, value in (("rank", rank), ("energy", energy), ("param_ratio", param_ratio))
            if value is not None
        ]
        if len(given) != 1:
            raise ValueError(
                f"compress.svd: set exactly one of rank, energy, param_ratio (got {given or 'none'}), "
                "e.g. compress.svd.param_ratio=0.3"
            )
        if rank is not None and rank < 1:
            raise ValueError(f"compress.svd.rank={rank} must be >= 1, e.g. 16")
        if energy is not None and not 0 < energy <= 1:
            raise ValueError(f"compress.svd.energy={energy} must be in (0, 1], e.g. 0.9")
        if param_ratio is not None and not 0 < param_ratio < 1:
            raise ValueError(f"compress.svd.param_ratio={param_ratio} must be in (0, 1), e.g. 0.3")
        if epoch < 0:
            raise ValueError(f"compress.svd.epoch={epoch} must be >= 0")
        self.epoch, self.rank, self.energy, self.param_ratio = epoch, rank, energy, param_ratio
        self.include_head = include_head
        self.before: nn.Module | None = None  # a copy of the net just before factoring

    @override
    def epochs(self) -> tuple[int, int]:
        """First and last epoch at which this step changes the net."""
        return self.epoch, self.epoch

    def targets(self, net: nn.Module) -> dict[str, nn.Module]:
        """The layers to factor, by name: Linear / Conv2d (groups=1), nn.LSTM; the head only if asked."""
        layers = {name: m for name, m in net.named_modules() if matrices(m)}
        if not self.include_head and layers:
            layers.pop(output_layer(net), None)
        return layers

    @override
    def check(self, net: nn.Module, max_epochs: int) -> None:
        """Start-up checks: the schedule fits the budget and a fixed rank fits every target layer."""
        if self.epoch >= max_epochs:
            raise ValueError(
                f"compress.svd.epoch={self.epoch} must be < trainer.max_epochs={max_epochs} "
                "so the factors get fine-tuned"
            )
        targets = self.targets(net)
        if not targets:
            dense = left_dense(net)
            kept = f" (its recurrent matrices {', '.join(dense)} stay dense: svd factors Linear / Conv2d / nn.LSTM)"
            raise ValueError(
                "compress.svd: the net has no Linear / Conv2d / LSTM layer to factor besides its head"
                f"{kept if dense else ''}; set compress.svd.include_head=true"
            )
        if self.rank is not None:
            for name, layer in targets.items():
                for label, matrix in matrices(layer).items():
                    if self.rank > max_useful_rank(matrix):
                        m, n = matrix.shape
                        where = name if label == "weight" else f"{name}.{label}"
                        raise ValueError(
                            f"compress.svd.rank={self.rank} is too large for layer net.{where} ({m}x{n} "
                            f"weights): at most {max_useful_rank(matrix)} saves weights; lower it or use "
                            "compress.svd.param_ratio"
                        )

    def choose_rank(self, matrix: torch.Tensor) -> int:
        """The rank of `matrix` [m, n] by the step's rule."""
        m, n = matrix.shape
        if self.rank is not None:
            return self.rank
        if self.param_ratio is not None:
            return max(1, math.floor(self.param_ratio * m * n / (m + n)))
        return energy_rank(torch.linalg.svdvals(matrix), self.energy)

    def layer_ranks(self, layer: nn.Module) -> int | dict[str, int] | None:
        """The rank of each matrix of `layer` where factoring saves weights (one int for a Linear /
        Conv2d, a mapping by matrix for an LSTM); None where none does."""
        ranks = {
            label: (self.choose_rank(matrix), max_useful_rank(matrix)) for label, matrix in matrices(layer).items()
        }
        useful = {label: rank for label, (rank, most) in ranks.items() if rank <= most}
        if not useful:
            return None
        return useful["weight"] if isinstance(layer, FACTORABLE) else useful

    @override
    def results(self, net: nn.Module, dense_bytes: int) -> dict[str, Any]:
        """`svd_left_dense`: the recurrent matrices the step left unfactored (none: no key)."""
        dense = left_dense(net)
        return {"svd_left_dense": dense} if dense else {}

    @override
    def restructure(self, net: nn.Module) -> None:
        """What this step does to the net's shapes (a dry run on a copy at start-up)."""
        self.factor(net)

    def factor(self, net: nn.Module) -> dict[str, int | dict[str, int]]:
        """Factor every target layer where it saves weights; returns the ranks used."""
        ranks = {}
        for name, layer in self.targets(net).items():
            rank = self.layer_ranks(layer)
            if rank is not None:
                set_module(net, name, factored(layer, rank))
                ranks[name] = rank
        record(net, {"kind": "factor", "step": self.step, "ranks": ranks})
        return ranks

    @override
    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.current_epoch < self.epoch or applied(pl_module.shipped_net, self.step):
            return
        self.before = snapshot(pl_module.shipped_net)
        self.factor(pl_module.shipped_net)
        rebuild_optimizers(trainer)
