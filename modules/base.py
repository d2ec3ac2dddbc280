"""What every task module shares: a training loss that is visible without per-step logging cost,
and cheap bookkeeping attributes for Lightning's hook calls."""

from __future__ import annotations

import inspect
from typing import Any

import lightning.pytorch as pl
import torch
from typing_extensions import override

__all__ = ["RecipeModule", "TRAIN_LOSS_KEY"]

# Attributes that only ever hold plain Python values and are set many times per training step.
_PLAIN_ATTRS = frozenset({"_current_fx_name", "_loss_count", "_train_seen"})
# The checkpoint entry holding the training losses accumulated since `train/loss` was last logged.
TRAIN_LOSS_KEY = "train_loss_since_log"


class RecipeModule(pl.LightningModule):
    """LightningModule base of the recipes' tasks.

    Two fixes for Lightning's per-step bookkeeping, each worth several percent of a tiny step (mlp on
    digits, see scripts/bench_overhead.py): Lightning sets `_current_fx_name` around every hook call,
    about 45 times per step, and `nn.Module.__setattr__` checks parameters, buffers and submodules
    on each set, so plain values skip those checks here; and training_step's signature is cached.

    `track_train_loss` accumulates the loss on-device and logs its mean as `train/loss` only on the
    steps Lightning forwards to the loggers (`trainer.log_every_n_steps`): a per-step `self.log`
    costs more than a tiny step, and a per-step `.item()` would stall the GPU. The steps since the last
    such log ride in every checkpoint, so a resumed run logs the same `train/loss` as an uninterrupted
    one (a subclass that overrides on_save_checkpoint / on_load_checkpoint calls super()).
    """

    def __init_subclass__(cls, **kwargs: Any) -> None:
        # Lightning inspects training_step's signature on every step (inspect.getfullargspec, ~40 us);
        # a function's __signature__ is what inspect returns first, so compute it once per class.
        super().__init_subclass__(**kwargs)
        step = cls.__dict__.get("training_step")
        if step is not None and not hasattr(step, "__signature__"):
            step.__signature__ = inspect.signature(step)

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("_loss_sum", torch.zeros(()), persistent=False)
        self._loss_count = 0

    def __setattr__(self, name: str, value: Any) -> None:
        if name in _PLAIN_ATTRS:
            object.__setattr__(self, name, value)
        else:
            super().__setattr__(name, value)

    def track_train_loss(self, loss: torch.Tensor) -> None:
        self._loss_sum.add_(loss.detach())
        self._loss_count += 1

    @override
    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        # Exactly the steps whose metrics Lightning sends to the loggers and the progress bar.
        if self._loss_count and self.trainer._logger_connector.should_update_logs:
            self.log("train/loss", self._loss_sum / self._loss_count, prog_bar=True)
            self._loss_sum.zero_()
            self._loss_count = 0

    @override
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Checkpoints are written at epoch ends, which rarely fall on a logging step: the sum of the
        # losses since the last `train/loss` (a plain tensor and an int: weights_only-safe).
        checkpoint[TRAIN_LOSS_KEY] = {"sum": self._loss_sum.detach().cpu().clone(), "count": self._loss_count}

    @override
    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        saved = checkpoint.get(TRAIN_LOSS_KEY)  # absent in a checkpoint written before it was kept
        if saved is not None:
            self._loss_sum.copy_(saved["sum"])
            self._loss_count = int(saved["count"])
