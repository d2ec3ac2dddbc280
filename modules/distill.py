"""Knowledge distillation (Hinton et al. 2015): a student learns from a frozen teacher's softened
outputs as well as from the labels."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader
from torchmetrics.classification import MulticlassAccuracy
from typing_extensions import override

from modules.classifier import ClassifierModule

__all__ = ["DistillModule", "distillation_loss"]


def distillation_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    targets: torch.Tensor,
    temperature: float,
    alpha: float,
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """`alpha * CE(y, student) + (1 - alpha) * T^2 * KL(softmax(teacher/T) || softmax(student/T))`.

    `alpha` weights the hard-label term (codebases disagree; Hinton et al. put a small weight there).
    The T^2 factor keeps the soft term's gradients on the hard term's scale as T changes.
    """
    hard = F.cross_entropy(student_logits, targets, label_smoothing=label_smoothing)
    soft = F.kl_div(
        F.log_softmax(student_logits / temperature, dim=1),
        F.log_softmax(teacher_logits / temperature, dim=1),
        log_target=True,
        reduction="batchmean",
    )
    return alpha * hard + (1 - alpha) * temperature**2 * soft


class DistillModule(ClassifierModule):
    """Trains `net` (the student) against a frozen reference net (`teacher`).

    Other keyword arguments are ClassifierModule's (scheduler, label smoothing, fine-tuning knobs).
    The teacher is deliberately not a submodule: it is never in the student's checkpoint, the
    optimizer or the summary, and stays in eval mode. Its net is rebuilt from `task.teacher_ckpt`.
    With `cache_teacher_logits` and no training augmentation the teacher runs once per training
    sample (at the start of training) instead of once per sample per epoch.
    """

    pipelines = False  # training_step's loss needs the teacher's logits beside the net's: not loss_fn(net(x), y)

    def __init__(
        self,
        net: nn.Module,
        optimizer: Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer],
        teacher: nn.Module | None = None,
        temperature: float = 4.0,
        alpha: float = 0.1,
        cache_teacher_logits: bool = True,
        **classifier: Any,
    ) -> None:
        super().__init__(net, optimizer, **classifier)
        if temperature <= 0:
            raise ValueError(f"task.temperature={temperature} must be positive, e.g. 4")
        if not 0 <= alpha <= 1:
            raise ValueError(f"task.alpha={alpha} must be in [0, 1] (the weight of the hard-label term)")
        if teacher is not None:
            teacher.eval().requires_grad_(False)
        object.__setattr__(self, "teacher", teacher)  # bypass nn.Module registration on purpose
        self.temperature, self.alpha = temperature, alpha
        self.needs_sample_index = cache_teacher_logits  # the data module then adds each sample's index
        self._teacher_cache: torch.Tensor | None = None
        classes = net.num_classes
        self.val_soft_acc = MulticlassAccuracy(classes, average="micro", validate_args=False)
        self.test_soft_acc = MulticlassAccuracy(classes, average="micro", validate_args=False)

    def _reference(self) -> nn.Module:
        if self.teacher is None:
            raise RuntimeError("no teacher net: set task.teacher_ckpt (or let the recipe train one first)")
        return self.teacher

    def _move_reference(self) -> None:
        self._reference().to(self.device).eval()

    @override
    def on_fit_start(self) -> None:
        self._move_reference()

    @override
    def on_test_start(self) -> None:
        self._move_reference()

    @override
    def on_train_start(self) -> None:
        datamodule = self.trainer.datamodule
        if self.needs_sample_index and datamodule is not None and not getattr(datamodule, "augment", True):
            self._teacher_cache = self._all_teacher_logits(datamodule.training_dataset())

    @torch.no_grad()
    def _all_teacher_logits(self, dataset: Any) -> torch.Tensor:
        """Teacher logits of every training sample, in dataset index order."""
        loader = DataLoader(dataset, batch_size=512, shuffle=False)
        return torch.cat([self._reference()(batch[0].to(self.device)) for batch in loader])

    @torch.no_grad()
    def teacher_logits(self, batch: Any) -> torch.Tensor:
        if self._teacher_cache is not None and len(batch) > 2:
            return self._teacher_cache[batch[2]]
        return self._reference()(batch[0])

    @override
    def chance_loss(self) -> float | None:
        return None  # the loss mixes cross-entropy with a KL term whose "learned nothing" level differs

    @override
    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch[0], batch[1]
        logits = self.net(x)
        loss = distillation_loss(
            logits, self.teacher_logits(batch), y, self.temperature, self.alpha, self.loss_fn.label_smoothing
        )
        self.count_correct(logits, y)
        self.track_train_loss(loss)
        return loss

    @classmethod
    @override
    def test_metric_names(cls) -> tuple[str, ...]:
        return (*super().test_metric_names(), "test/soft_acc")

    @classmethod
    @override
    def monitorable_metric_names(cls) -> tuple[str, ...] | None:
        return (*(super().monitorable_metric_names() or ()), "val/soft_acc")

    @override
    def _evaluate(self, batch: Any, stage: str) -> None:
        logits = super()._evaluate(batch, stage)
        soft_acc = getattr(self, f"{stage}_soft_acc")
        soft_acc.update(logits, self.teacher_logits(batch[:2]).argmax(dim=1))
        self.log(f"{stage}/soft_acc", soft_acc)
