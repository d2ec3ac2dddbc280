"""Gradual magnitude pruning (Zhu & Gupta 2017) on `torch.nn.utils.prune`.

Sparsity follows a cubic ramp from 0 at `start_epoch` to `sparsity` at `end_epoch`, pruned every
`every_n_steps` optimizer steps in between (small steps hurt less than one jump per epoch), then
training goes on with the masks held. Targets: every Linear / Conv2d weight and every recurrent
layer's input, recurrent and projection matrices (callbacks/surgery/weights.py); nn.LSTM computes
from the masked matrices, as pruning sets them through its `setattr`. Masks live in the net as
`weight_orig` / `weight_mask` entries, so they are in every checkpoint; on every fit the targets get
a (ones) mask in `setup`, before Lightning restores a checkpoint or builds the optimizer, so a
resumed run finds its masks and its optimizer sees parameters in the same order. At the end of the
fit the pruning is made permanent: the net holds plain, zero-filled weights, ready for export.
(Lightning's own ModelPruning loses masks on resume and rewinds weights by default.)

`scope="layer"` prunes each layer to its own sparsity: `layer_sparsity[name]` (Han's per-layer
rates, e.g. 95/95/80% for LeNet-300-100) or `sparsity` for the layers it does not name. With
`drop_dead_units`, from `end_epoch` on, a hidden unit left with no outgoing weight also loses its
incoming weights (masked) and bias (zeroed after every optimizer step): it cannot change the
logits, and Deep Compression's file then need not ship it (callbacks/surgery/dead_units.py).
"""

from __future__ import annotations

from collections.abc import Mapping

import lightning.pytorch as pl
import torch
from torch import nn
from torch.nn.utils import prune
from typing_extensions import override

from callbacks.step import CompressionStep, Stage
from callbacks.surgery.dead_units import zero_dead_units
from callbacks.surgery.folding import pruned_names, snapshot
from callbacks.surgery.weights import LAYERS, weight_targets

__all__ = [
    "MagnitudePruning",
    "PRUNABLE",
    "cubic_sparsity",
    "masked_weight",
    "prunable",
    "prunable_names",
    "pruned_count",
    "weight_sparsity",
]

PRUNABLE = LAYERS  # layers whose `weight` is pruned (recurrent layers: their matrices, callbacks/surgery/weights.py)


def prunable(net: nn.Module) -> list[tuple[nn.Module, str]]:
    """Every Linear / Conv2d weight and recurrent matrix of `net`, as (module, tensor name)."""
    return [(module, tensor) for _, module, tensor in weight_targets(net)]


def prunable_names(net: nn.Module) -> list[str]:
    """The names `layer_sparsity` uses: a Linear / Conv2d's module name, `<module>.<tensor>` for a
    recurrent matrix (e.g. `lstm.weight_hh_l0`)."""
    return [label for label, _, _ in weight_targets(net)]


def pruned_count(module: nn.Module, name: str) -> int:
    """How many weights of `module.<name>` its pruning mask holds at zero (0 when it has none)."""
    mask = getattr(module, f"{name}_mask", None)
    return 0 if mask is None else int((mask == 0).sum())


def masked_weight(module: nn.Module, name: str) -> torch.Tensor:
    """The weight as the net computes it. (The `weight` attribute of a pruned module is refreshed only
    by its next forward, so right after a checkpoint restore it would still be the dense one.)"""
    if hasattr(module, f"{name}_mask"):
        return getattr(module, f"{name}_orig") * getattr(module, f"{name}_mask")
    return getattr(module, name)


def weight_sparsity(net: nn.Module) -> float:
    """Share of zeros over all prunable weights (masked or permanent)."""
    weights = [masked_weight(m, name) for m, name in prunable(net)]
    total = sum(w.numel() for w in weights)
    return sum(int((w == 0).sum()) for w in weights) / total


def cubic_sparsity(epoch: float, final: float, start: int, end: int) -> float:
    """Zhu & Gupta's schedule: s_t = s_f * (1 - (1 - (t - t0) / (t1 - t0))^3), clipped to [t0, t1]."""
    if epoch < start:
        return 0.0
    if epoch >= end:
        return final
    return final * (1 - (1 - (epoch - start) / (end - start)) ** 3)


class MagnitudePruning(CompressionStep):
    """Unstructured L1 pruning of Linear / Conv2d weights and recurrent (LSTM) matrices, `scope="global"`
    (one threshold over all layers) or `"layer"` (each layer to its own sparsity: `layer_sparsity[name]`, else `sparsity`),
    on `pl_module.shipped_net`."""

    def __init__(
        self,
        sparsity: float = 0.9,
        start_epoch: int = 0,
        end_epoch: int = 10,
        scope: str = "global",
        every_n_steps: int = 10,
        layer_sparsity: Mapping[str, float] | None = None,
        drop_dead_units: bool = False,
    ) -> None:
        if not 0 <= sparsity < 1:
            raise ValueError(f"compress.prune.sparsity={sparsity} must be in [0, 1), e.g. 0.9")
        self.layer_sparsity = {str(k): float(v) for k, v in (layer_sparsity or {}).items()}
        for name, value in self.layer_sparsity.items():
            if not 0 <= value < 1:
                raise ValueError(f"compress.prune.layer_sparsity.{name}={value} must be in [0, 1), e.g. 0.95")
        if self.layer_sparsity and scope != "layer":
            raise ValueError(
                f"compress.prune.layer_sparsity needs compress.prune.scope=layer (scope={scope} prunes by one threshold)"
            )
        if not 0 <= start_epoch <= end_epoch:
            raise ValueError(
                f"compress.prune.start_epoch={start_epoch} and end_epoch={end_epoch} need 0 <= start_epoch <= end_epoch"
            )
        if every_n_steps < 1:
            raise ValueError(f"compress.prune.every_n_steps={every_n_steps} must be >= 1")
        if scope not in ("global", "layer"):
            raise ValueError(f"compress.prune.scope={scope!r} must be 'global' or 'layer'")
        self.sparsity, self.start_epoch, self.end_epoch, self.scope = sparsity, start_epoch, end_epoch, scope
        self.every_n_steps, self.drop_dead_units = every_n_steps, drop_dead_units
        self.history: list[float] = []  # sparsity after each pruning step
        self.before: nn.Module | None = None  # a copy of the net just before its first prune

    step = "prune"
    stage = Stage.SPARSITY
    order_reason = "prune the weights that ship, then change how they are stored"
    excludes = {"dsd": "both mask the weights"}

    @override
    def epochs(self) -> tuple[int, int]:
        """First and last epoch at which this step changes the net."""
        return self.start_epoch, self.end_epoch

    @override
    def check(self, net: nn.Module, max_epochs: int) -> None:
        """Start-up check: the net trains with the final mask before the budget ends."""
        if self.end_epoch >= max_epochs:
            raise ValueError(
                f"compress.prune.end_epoch={self.end_epoch} must be < trainer.max_epochs={max_epochs} "
                "so the net trains with the final mask"
            )
        names = prunable_names(net)
        unknown = sorted(set(self.layer_sparsity) - set(names))
        if unknown:
            raise ValueError(
                f"compress.prune.layer_sparsity names {unknown[0]!r}, not a Linear / Conv2d of this net: "
                f"use its module names ({', '.join(names)})"
            )

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit":
            self.ensure_masks(pl_module.shipped_net)

    @staticmethod
    def ensure_masks(net: nn.Module) -> None:
        """An all-ones mask on every target that has none yet (at setup, and on layers an earlier
        compression step created), so every checkpoint has the same keys whatever the phase."""
        for module, name in prunable(net):
            if name not in pruned_names(module):
                prune.identity(module, name)

    @override
    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: object, batch_idx: int
    ) -> None:
        epoch = trainer.current_epoch + batch_idx / max(trainer.num_training_batches, 1)
        if not self.start_epoch <= epoch <= self.end_epoch or trainer.global_step % self.every_n_steps:
            return
        self.prune_to(pl_module.shipped_net, cubic_sparsity(epoch, 1.0, self.start_epoch, self.end_epoch))

    @override
    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.ensure_masks(pl_module.shipped_net)
        if trainer.current_epoch == self.end_epoch:  # land exactly on the final sparsity
            self.prune_to(pl_module.shipped_net, 1.0)

    @override
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: object, batch: object, batch_idx: int
    ) -> None:
        # after every optimizer step (and so before any checkpoint) once the masks are final: the
        # optimizer's momentum would otherwise move a dead unit's bias off zero again
        if self.drop_dead_units and trainer.current_epoch >= self.end_epoch:
            zero_dead_units(pl_module.shipped_net)

    def prune_to(self, net: nn.Module, progress: float) -> None:
        """Prune the smallest still-unpruned weights until `progress` (in [0, 1]) of the final
        sparsity is reached: over all layers (global scope) or in each layer."""
        if self.scope == "layer":
            self.prune_layers(net, progress)
            return
        target, current = self.sparsity * progress, weight_sparsity(net)
        if target <= current:
            return
        if self.before is None:
            self.before = snapshot(net)
        amount = (target - current) / (1 - current)  # share of the still-unpruned weights
        targets = prunable(net)
        scores = {(m, name): masked_weight(m, name).detach() for m, name in targets}
        prune.global_unstructured(targets, pruning_method=prune.L1Unstructured, amount=amount, importance_scores=scores)
        self.history.append(weight_sparsity(net))

    def prune_layers(self, net: nn.Module, progress: float) -> None:
        """Each layer to `progress` x its own final sparsity, counted in weights."""
        pruned = False
        for layer, module, name in weight_targets(net):
            scores = masked_weight(module, name).detach()
            final = self.layer_sparsity.get(layer, self.sparsity)
            count = round(final * progress * scores.numel()) - pruned_count(module, name)
            if count <= 0:
                continue
            if self.before is None:
                self.before = snapshot(net)
            prune.l1_unstructured(module, name, amount=count, importance_scores=scores)
            pruned = True
        if pruned:
            self.history.append(weight_sparsity(net))

    @override
    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        for module, name in prunable(pl_module.shipped_net):
            if name in pruned_names(module):
                prune.remove(module, name)
