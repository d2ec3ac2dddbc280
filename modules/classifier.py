"""The baseline task: a classifier trained with cross-entropy, measured with torchmetrics accuracy."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassAccuracy

from modules.base import RecipeModule


class ClassifierModule(RecipeModule):
    """Wraps a net from modules.nets (as `self.net`) with loss, metrics, optimizer and scheduler."""

    def __init__(
        self,
        net: nn.Module,
        optimizer: Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer],
        scheduler: Callable[[torch.optim.Optimizer], Any] | None = None,
        label_smoothing: float = 0.0,
    ) -> None:
        super().__init__()
        if not 0 <= label_smoothing < 1:
            raise ValueError(f"task.label_smoothing={label_smoothing} must be in [0, 1)")
        self.net = net
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        self.loss_fn = nn.CrossEntropyLoss(label_smoothing=label_smoothing)
        classes = net.num_classes
        # Training accuracy: correct predictions are counted on-device every step (one argmax, a few
        # us) and reduced once per epoch; MulticlassAccuracy.update would cost ~30 us per tiny step.
        self.train_acc = MeanMetric()
        self.register_buffer("_train_correct", torch.zeros((), dtype=torch.long), persistent=False)
        self._train_seen = 0
        self.val_acc = MulticlassAccuracy(classes, average="micro", validate_args=False)
        self.test_acc = MulticlassAccuracy(classes, average="micro", validate_args=False)
        self.val_loss, self.test_loss = MeanMetric(), MeanMetric()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    # --- training -------------------------------------------------------------------------------
    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        logits = self.net(x)
        loss = self.loss_fn(logits, y)
        self._train_correct.add_((logits.detach().argmax(dim=1) == y).sum())
        self._train_seen += y.numel()
        self.track_train_loss(loss)
        return loss

    def on_train_epoch_end(self) -> None:
        if self._train_seen:  # MeanMetric weights each rank by its sample count under DDP
            self.train_acc.update(self._train_correct / self._train_seen, weight=self._train_seen)
            self.log("train/acc", self.train_acc, prog_bar=True)
        self._train_correct.zero_()
        self._train_seen = 0

    # --- evaluation -----------------------------------------------------------------------------
    def _evaluate(self, batch: tuple[torch.Tensor, torch.Tensor], stage: str) -> None:
        x, y = batch
        logits = self.net(x)
        loss_metric, acc_metric = getattr(self, f"{stage}_loss"), getattr(self, f"{stage}_acc")
        loss_metric.update(self.loss_fn(logits, y), weight=y.numel())
        acc_metric.update(logits, y)
        self.log(f"{stage}/loss", loss_metric, prog_bar=stage == "val")
        self.log(f"{stage}/acc", acc_metric, prog_bar=stage == "val")

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._evaluate(batch, "val")

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._evaluate(batch, "test")

    # --- optimization ---------------------------------------------------------------------------
    def configure_optimizers(self) -> Any:
        optimizer = self.optimizer_factory([p for p in self.parameters() if p.requires_grad])
        if self.scheduler_factory is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": self.scheduler_factory(optimizer), "interval": "epoch"}}
