"""The baseline task: a classifier trained with cross-entropy, measured with torchmetrics accuracy."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import lightning.pytorch as pl
import torch
from torch import nn
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassAccuracy


class ClassifierModule(pl.LightningModule):
    """Wraps a net from modules.nets (as `self.net`) with loss, metrics, optimizer and scheduler.

    The training loss is accumulated on-device and logged only on the steps Lightning sends to the
    loggers (`trainer.log_every_n_steps`): calling `self.log` every step costs more than a tiny
    step itself, and a per-step `.item()` would stall the GPU.
    """

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
        self.train_acc = MulticlassAccuracy(classes, average="micro", validate_args=False)
        self.val_acc = MulticlassAccuracy(classes, average="micro", validate_args=False)
        self.test_acc = MulticlassAccuracy(classes, average="micro", validate_args=False)
        self.val_loss, self.test_loss = MeanMetric(), MeanMetric()
        self.register_buffer("_loss_sum", torch.zeros(()), persistent=False)
        self._loss_count = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    # --- training -------------------------------------------------------------------------------
    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        logits = self.net(x)
        loss = self.loss_fn(logits, y)
        self.train_acc.update(logits.detach(), y)
        self._loss_sum += loss.detach()
        self._loss_count += 1
        return loss

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        # Exactly the steps whose metrics Lightning forwards to the loggers and the progress bar.
        if self._loss_count and self.trainer._logger_connector.should_update_logs:
            self.log("train/loss", self._loss_sum / self._loss_count, prog_bar=True)
            self._loss_sum.zero_()
            self._loss_count = 0

    def on_train_epoch_end(self) -> None:
        self.log("train/acc", self.train_acc, prog_bar=True)

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
