"""Every run's guard against divergence: a non-finite loss stops the run (RunStopped, exit 1) before
any checkpoint of the broken weights is written, and a run whose training loss did not go down ends
with a warning. build_training adds it next to RecipeState, so editing `callbacks` cannot drop it."""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from typing_extensions import override

from modules.task import Task
from recipes.errors import RunStopped

__all__ = ["DivergenceGuard", "learning_rate", "log", "step_loss"]

log = logging.getLogger(__name__)

_NONE = 2**62  # "no non-finite loss yet" as a step number, so that ranks agree by taking the minimum


def step_loss(outputs: Any) -> torch.Tensor | None:
    """The loss a training_step returned (a tensor, or a dict's "loss"), if any."""
    loss = outputs.get("loss") if isinstance(outputs, Mapping) else outputs
    return loss.detach() if isinstance(loss, torch.Tensor) else None


class DivergenceGuard(Callback):
    """Stops the run when the training loss (or a validation metric) is NaN or infinite.

    Each step only keeps its (detached) loss; the kept losses are examined together, on their device,
    whenever the record is read (a check that read the loss every step would stall a GPU once per
    step, and a few tensor ops per step cost more than a tiny step's arithmetic). The record, the
    first step whose loss was not finite, is read, and agreed on
    by every rank (a collective, so all ranks stop at the same point and none waits on a stopped one),
    every `trainer.log_every_n_steps` steps, before validation, at epoch end and before any
    checkpoint is written; so no checkpoint holds the diverged weights, and none becomes "best".

    It also compares the mean training loss of the last tenth of the steps with the first tenth's and
    with the task's chance level (Task.chance_loss): a run whose loss did not go down, or stayed at
    chance, gets a warning (it finished, but it did not learn).
    """

    def __init__(self) -> None:
        self.first_bad: torch.Tensor | None = None  # step of the first non-finite loss on this rank
        self.bad_loss: torch.Tensor | None = None  # that loss (nan, inf or -inf)
        self.window = 0
        self.total = 0.0
        self.head = [0.0, 0]  # on-device sum and count of the losses in the first window of steps
        self.tail = [0.0, 0]
        self.pending: list[tuple[int, torch.Tensor]] = []  # (step, loss) not examined yet

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.total = trainer.estimated_stepping_batches
        self.window = max(1, int(self.total) // 10) if math.isfinite(self.total) and self.total >= 2 else 0

    @override
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        loss = step_loss(outputs)
        if loss is None:
            return
        step = trainer.global_step  # optimizer steps done, this one included
        self.pending.append((step, loss))
        if step % max(1, trainer.log_every_n_steps) == 0:
            self.check(trainer)

    def examine(self) -> None:
        """Fold the kept losses into the record (first non-finite step and loss) and the head and
        tail sums, with a handful of tensor ops for all of them."""
        if not self.pending:
            return
        steps = torch.tensor([step for step, _ in self.pending])
        losses = torch.stack([loss for _, loss in self.pending])
        self.pending = []
        if self.first_bad is None:
            self.first_bad = torch.full((), _NONE, dtype=torch.long, device=losses.device)
            self.bad_loss = torch.zeros((), dtype=losses.dtype, device=losses.device)
        bad = ~torch.isfinite(losses)
        first = bad.int().argmax()  # the first non-finite one, if any
        new = torch.logical_and(bad.any(), self.first_bad == _NONE)
        self.first_bad = torch.where(new, steps.to(losses.device)[first], self.first_bad)
        self.bad_loss = torch.where(new, losses[first], self.bad_loss)
        if self.window:
            for part, chosen in ((self.head, steps <= self.window), (self.tail, steps > self.total - self.window)):
                count = int(chosen.sum())
                if count:
                    part[0], part[1] = part[0] + losses[chosen.to(losses.device)].sum(), part[1] + count

    def check(self, trainer: pl.Trainer) -> None:
        """Raise RunStopped on every rank when any rank has seen a non-finite training loss."""
        self.examine()
        local = (
            self.first_bad if self.first_bad is not None else torch.tensor(_NONE, device=trainer.strategy.root_device)
        )
        first = int(trainer.strategy.reduce(local.clone(), reduce_op="min"))
        if first == _NONE:
            return
        value = float(self.bad_loss) if int(local) == first and self.bad_loss is not None else "non-finite"
        raise RunStopped(
            f"train/loss became {value} at step {first} (epoch {trainer.current_epoch}): the run "
            f"diverged; likely {learning_rate(trainer)} is too high: lower it, or set "
            f"trainer.gradient_clip_val"
        )

    @override
    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking:
            self.check(trainer)

    @override
    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # The checkpoint callbacks run after this one (Lightning orders them last): a non-finite
        # validation metric stops the run before they pick a "best" from it.
        bad = sorted(
            name
            for name, value in trainer.callback_metrics.items()
            if isinstance(value, torch.Tensor) and value.numel() == 1 and not torch.isfinite(value)
        )
        if trainer.strategy.reduce_boolean_decision(bool(bad), all=False):
            what = f"{bad[0]} became {float(trainer.callback_metrics[bad[0]])}" if bad else "a metric became non-finite"
            raise RunStopped(
                f"{what} at epoch {trainer.current_epoch} (step {trainer.global_step}): the run "
                f"diverged; likely {learning_rate(trainer)} is too high: lower it, or set "
                f"trainer.gradient_clip_val"
            )

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.check(trainer)

    @override
    def on_save_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        self.check(trainer)  # before the file is written: no checkpoint ever holds diverged weights

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.examine()  # the steps after the last check (a run stopped by max_steps mid-epoch)
        chance = pl_module.chance_loss() if isinstance(pl_module, Task) else None
        if chance is None or not (self.head[1] and self.tail[1]) or not trainer.is_global_zero:
            return  # a task with no "learned nothing" level (a GAN) is not judged by its loss
        first, last = float(self.head[0]) / self.head[1], float(self.tail[0]) / self.tail[1]
        if last >= chance or not last < first:
            why = (
                f"is at or above {chance:.4g}, the loss of a model that learned nothing"
                if last >= chance
                else f"is not below that of the first {self.head[1]} ({first:.4g})"
            )
            log.warning(
                f"the run did not learn: the mean train/loss of the last {self.tail[1]} steps ({last:.4g}) "
                f"{why}; check {learning_rate(trainer)} (too high or too low)"
            )


def learning_rate(trainer: pl.Trainer) -> str:
    """The configured learning rate, as the override that sets it."""
    groups = trainer.optimizers[0].param_groups if trainer.optimizers else []
    if not groups:
        return "the learning rate"
    lr = groups[0].get("initial_lr", groups[0].get("lr"))
    return f"task.optimizer.lr={lr:g}"
