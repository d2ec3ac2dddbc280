"""The baseline task: a classifier trained with cross-entropy, measured with torchmetrics accuracy."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassAccuracy
from typing_extensions import override

from modules.nets import head_block
from modules.task import Task

__all__ = ["ClassifierModule", "backbone", "head", "load_backbone"]


def head(net: nn.Module) -> nn.Module:
    """The classifier head: the top-level block holding the net's output layer (modules.nets.head_block)."""
    return net.get_submodule(head_block(net))


def backbone(net: nn.Module) -> nn.Module:
    """Everything before the head (the same modules, not copies)."""
    head_name = head_block(net)
    return nn.Sequential(*[child for name, child in net.named_children() if name != head_name])


def load_backbone(net: nn.Module, init: nn.Module, keep_head: bool) -> None:
    """Copy `init`'s weights into `net` (fine-tuning), with or without the head."""
    head_prefix = f"{head_block(net)}."
    state = {k: v for k, v in init.state_dict().items() if keep_head or not k.startswith(head_prefix)}
    if keep_head:
        theirs = [v.shape for k, v in state.items() if k.startswith(head_prefix)]
        ours = [v.shape for k, v in net.state_dict().items() if k.startswith(head_prefix)]
        if theirs != ours:
            raise ValueError(
                f"the checkpoint's head does not fit this data's {net.num_classes} classes "
                f"(head shapes {[tuple(t) for t in theirs]}); pass task.reinit_head=true"
            )
    missing, unexpected = net.load_state_dict(state, strict=False)
    if unexpected or any(not k.startswith(head_prefix) for k in missing):
        raise ValueError(
            f"the checkpoint's net does not match model (missing {missing[:3]}, unexpected "
            f"{unexpected[:3]}); use the model settings it was trained with"
        )


class ClassifierModule(Task):
    """Wraps a net from modules.nets (as `self.net`, the net that ships) with loss, metrics, optimizer
    and scheduler. The best checkpoint is the one with the highest `val/acc` unless `monitor` /
    `monitor_mode` say otherwise.

    Fine-tuning knobs: `init` (a net rebuilt from `task.init_ckpt`) gives the starting weights;
    `reinit_head` keeps a fresh head (another class count); `freeze_backbone` trains the head only
    (backbone BatchNorm statistics frozen too); `backbone_lr_scale` gives the backbone a lower LR.
    """

    classifies_images = True  # the task contract's capability: its net can be attacked (recipes.attack)
    pipelines = True  # the task contract's capability: training_step is loss_fn(net(x), y) (strategy=pipeline)

    def __init__(
        self,
        net: nn.Module,
        optimizer: Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer],
        scheduler: Callable[[torch.optim.Optimizer], Any] | None = None,
        label_smoothing: float = 0.0,
        init: nn.Module | None = None,
        reinit_head: bool = False,
        freeze_backbone: bool = False,
        backbone_lr_scale: float = 1.0,
        monitor: str = "val/acc",
        monitor_mode: str = "max",
    ) -> None:
        super().__init__(monitor, monitor_mode)
        if not 0 <= label_smoothing < 1:
            raise ValueError(f"task.label_smoothing={label_smoothing} must be in [0, 1)")
        if not backbone_lr_scale > 0:
            raise ValueError(f"task.backbone_lr_scale={backbone_lr_scale} must be positive (1 = the head's LR)")
        self.net = net
        if init is not None:
            load_backbone(net, init, keep_head=not reinit_head)
        self.freeze_backbone, self.backbone_lr_scale = freeze_backbone, backbone_lr_scale
        if freeze_backbone:  # its BatchNorm statistics are frozen too, by eval mode from the first epoch on
            backbone(net).requires_grad_(False)  # (on_train_epoch_start: eval before fit starts is warned about)
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

    # --- the task contract (modules.task) ----------------------------------------------------------
    @property
    @override
    def shipped_net(self) -> nn.Module:
        return self.net

    @override
    def chance_loss(self) -> float | None:
        return math.log(self.net.num_classes)  # cross-entropy of a uniform guess

    @override
    def example_input(self, batch_size: int = 1) -> torch.Tensor:
        return torch.zeros(batch_size, *self.net.input_shape, device=self.device)

    @classmethod
    @override
    def test_metric_names(cls) -> tuple[str, ...]:
        return ("test/acc", "test/loss")

    @classmethod
    @override
    def monitorable_metric_names(cls) -> tuple[str, ...] | None:
        return ("val/acc", "val/loss", "train/acc", "train/loss")

    @override
    def parity_inputs(self, datamodule: Any) -> torch.Tensor:
        """The test split's images: an export must match the net on real data (zeros would let a
        wrong weight layout through)."""
        return torch.cat([batch[0] for batch in datamodule.test_dataloader()])

    # --- training -------------------------------------------------------------------------------
    @override
    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch[0], batch[1]
        logits = self.net(x)
        loss = self.loss_fn(logits, y)
        self.count_correct(logits, y)
        self.track_train_loss(loss)
        return loss

    def count_correct(self, logits: torch.Tensor, y: torch.Tensor) -> None:
        """Training accuracy bookkeeping: a few on-device ops per step, reduced once per epoch."""
        self._train_correct.add_((logits.detach().argmax(dim=1) == y).sum())
        self._train_seen += y.numel()

    @override
    def on_train_epoch_end(self) -> None:
        if self._train_seen:  # MeanMetric weights each rank by its sample count under DDP
            self.train_acc.update(self._train_correct / self._train_seen, weight=self._train_seen)
            self.log("train/acc", self.train_acc, prog_bar=True)
        self._train_correct.zero_()
        self._train_seen = 0

    # --- evaluation -----------------------------------------------------------------------------
    def _evaluate(self, batch: tuple[torch.Tensor, torch.Tensor], stage: str) -> torch.Tensor:
        x, y = batch[0], batch[1]
        logits = self.net(x)
        loss_metric, acc_metric = getattr(self, f"{stage}_loss"), getattr(self, f"{stage}_acc")
        loss_metric.update(self.loss_fn(logits, y), weight=y.numel())
        acc_metric.update(logits, y)
        self.log(f"{stage}/loss", loss_metric, prog_bar=stage == "val")
        self.log(f"{stage}/acc", acc_metric, prog_bar=stage == "val")
        return logits

    @override
    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._evaluate(batch, "val")

    @override
    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._evaluate(batch, "test")

    # --- optimization ---------------------------------------------------------------------------
    @override
    def train(self, mode: bool = True) -> ClassifierModule:
        super().train(mode)
        if self.freeze_backbone:
            backbone(self.net).eval()  # a frozen backbone keeps its BatchNorm statistics too
        return self

    @override
    def on_train_epoch_start(self) -> None:
        # Lightning restores submodule modes by attribute, not through train(): re-assert eval here. This
        # is after Lightning's check for modules in eval mode at the start of training (fit_loop), which
        # would warn about a backbone that was frozen already in __init__.
        if self.freeze_backbone:
            backbone(self.net).eval()

    @override
    def configure_optimizers(self) -> Any:
        trainable = [p for p in self.parameters() if p.requires_grad]
        if self.backbone_lr_scale == 1.0:
            optimizer = self.optimizer_factory(trainable)
        else:
            head_ids = {id(p) for p in head(self.net).parameters()}
            groups = [
                {"params": [p for p in trainable if id(p) not in head_ids], "lr_scale": self.backbone_lr_scale},
                {"params": [p for p in trainable if id(p) in head_ids], "lr_scale": 1.0},
            ]
            optimizer = self.optimizer_factory([g for g in groups if g["params"]])
            for group in optimizer.param_groups:  # before the scheduler records each group's initial LR
                group["lr"] *= group["lr_scale"]
        if self.scheduler_factory is None:
            return optimizer
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": self.scheduler_factory(optimizer), "interval": "epoch"},
        }
