"""Dense-sparse-dense training (Han et al. 2017): train dense; at `sparse_epoch` prune each layer's
smallest weights to `sparsity` and retrain with the mask held; at `redense_epoch` lift the mask, the
pruned weights restarting from zero, and retrain the whole net at a lower learning rate. The sparse
phase acts as a regularizer: the net re-grows the pruned connections from a better starting point.

The sparse phase is MagnitudePruning with a one-step schedule. Re-densifying keeps the pruning
parametrization (masks set to all ones) rather than removing it, so checkpoints of every phase
have the same keys and `ckpt_path=last` resumes in any phase; the end of fit makes it plain.
"""

from __future__ import annotations

import lightning.pytorch as pl
import torch
from torch import nn
from typing_extensions import override

from callbacks.prune import MagnitudePruning, prunable
from callbacks.surgery.folding import pruned_names

__all__ = ["DenseSparseDense"]


class DenseSparseDense(MagnitudePruning):
    step = "dsd"
    order_reason = "train dense-sparse-dense on the weights that ship, then change how they are stored"
    excludes = {"prune": "both mask the weights"}

    def __init__(
        self,
        sparsity: float = 0.5,
        sparse_epoch: int = 10,
        redense_epoch: int = 25,
        scope: str = "layer",
        redense_lr_scale: float = 0.1,
    ) -> None:
        if not 0 <= sparsity < 1:
            raise ValueError(f"compress.dsd.sparsity={sparsity} must be in [0, 1), e.g. 0.5")
        if not 0 <= sparse_epoch < redense_epoch:
            raise ValueError(
                f"compress.dsd.sparse_epoch={sparse_epoch} and redense_epoch={redense_epoch} need "
                "0 <= sparse_epoch < redense_epoch"
            )
        if not 0 < redense_lr_scale <= 1:
            raise ValueError(f"compress.dsd.redense_lr_scale={redense_lr_scale} must be in (0, 1], e.g. 0.1")
        super().__init__(sparsity=sparsity, start_epoch=sparse_epoch, end_epoch=sparse_epoch, scope=scope)
        self.redense_epoch, self.redense_lr_scale = redense_epoch, redense_lr_scale

    @override
    def epochs(self) -> tuple[int, int]:
        return self.start_epoch, self.redense_epoch

    @override
    def check(self, net: nn.Module, max_epochs: int) -> None:
        if self.redense_epoch >= max_epochs:
            raise ValueError(
                f"compress.dsd.redense_epoch={self.redense_epoch} must be < trainer.max_epochs="
                f"{max_epochs} so the net retrains dense"
            )

    @override
    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_epoch_start(trainer, pl_module)
        if trainer.current_epoch == self.redense_epoch:
            self.redensify(pl_module.shipped_net)
            self.scale_learning_rate(trainer)

    @staticmethod
    def redensify(net: nn.Module) -> None:
        """Lift every mask: pruned weights restart at zero and are free to train again."""
        with torch.no_grad():
            for module, name in prunable(net):
                if name in pruned_names(module):
                    mask = getattr(module, f"{name}_mask")
                    getattr(module, f"{name}_orig").mul_(mask)
                    mask.fill_(1)

    def scale_learning_rate(self, trainer: pl.Trainer) -> None:
        """Multiply the current and scheduled learning rates by `redense_lr_scale` (saved with the
        optimizer and scheduler state, so a resumed run keeps it)."""
        for optimizer in trainer.optimizers:
            for group in optimizer.param_groups:
                group["lr"] *= self.redense_lr_scale
        for config in trainer.lr_scheduler_configs:
            scheduler = config.scheduler
            if hasattr(scheduler, "base_lrs"):
                scheduler.base_lrs = [lr * self.redense_lr_scale for lr in scheduler.base_lrs]
