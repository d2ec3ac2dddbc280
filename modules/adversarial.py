"""Adversarial training as a classifier task (`task=adversarial`, `recipe=adv_train`): the classifier
of modules.classifier trained on adversarial examples made on the fly, and measured each epoch by
its PGD accuracy (`val/robust_acc`).

Methods (`task.method`):
- `fgsm_mix`: Goodfellow et al. 2015, `alpha * J(x) + (1 - alpha) * J(x + eps sign(grad J))`;
- `pgd`: Madry et al. 2018, min-max training on PGD examples (random start, `train_steps` steps);
- `fast`: Wong et al. 2020 ("Fast is better than free"), one FGSM step of `train_step_size` from a
  uniform random start, with their guard against catastrophic overfitting.

The guard (`task.guard`): after each validation, when `val/robust_acc` (PGD on the held-out
validation split) falls more than `task.guard_drop` below its best so far, training has collapsed
(FGSM-style training suddenly stops resisting PGD): the net gets back the weights of the last good
epoch, training stops, a warning says so, and results.json's `adversarial.guard` records it.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable
from typing import Any

import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch import nn
from torchmetrics.classification import MulticlassAccuracy
from typing_extensions import override

from modules.classifier import ClassifierModule
from modules.perturbations import check_eps, check_steps, fgsm, pgd, seeded
from modules.pixel_model import PixelModel, normalization_of

__all__ = ["AdversarialModule", "GUARD_KEY", "METHODS"]

METHODS = ("fgsm_mix", "pgd", "fast")
GUARD_KEY = "adversarial_guard"  # the guard's state in a checkpoint (plain data and tensors)


class AdversarialModule(ClassifierModule):
    """ClassifierModule whose training step attacks its own net first. `eps`: the strength that
    `val/robust_acc` and `test/robust_acc` are measured at (L-inf, pixel units of images in [0, 1]);
    `train_eps`: the strength trained against (null: `train_eps_scale` x eps: training a little above
    the tested strength leaves a margin, so the test ball lies well inside what was defended). Step sizes in pixel units; null picks the
    papers' defaults (pgd: 2.5 * eps / steps; fast: 1.25 * eps). Other keyword arguments are
    ClassifierModule's (optimizer, scheduler, fine-tuning knobs, monitor)."""

    evaluates_with_gradients = True  # val/test steps run PGD: the test trainer runs with inference_mode=False
    pipelines = False  # training_step attacks the whole net first: no stage-by-stage schedule runs it

    def __init__(
        self,
        net: nn.Module,
        optimizer: Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer],
        method: str = "pgd",
        eps: float = 0.1,
        train_eps: float | None = None,
        train_eps_scale: float = 1.2,
        alpha: float = 0.5,
        train_steps: int = 10,
        train_step_size: float | None = None,
        eval_steps: int = 10,
        test_steps: int = 20,
        guard: bool = True,
        guard_drop: float = 0.2,
        monitor: str = "val/robust_acc",
        monitor_mode: str = "max",
        **classifier: Any,
    ) -> None:
        super().__init__(net, optimizer, monitor=monitor, monitor_mode=monitor_mode, **classifier)
        self.check_arguments(
            {
                "method": method,
                "eps": eps,
                "train_eps": train_eps,
                "train_eps_scale": train_eps_scale,
                "alpha": alpha,
                "train_steps": train_steps,
                "train_step_size": train_step_size,
                "eval_steps": eval_steps,
                "test_steps": test_steps,
                "guard_drop": guard_drop,
            }
        )
        self.method, self.eps, self.alpha = method, eps, alpha
        self.train_eps = round(train_eps_scale * eps, 6) if train_eps is None else train_eps
        self.train_steps = 1 if method == "fast" else train_steps
        default_size = 1.25 * self.train_eps if method == "fast" else 2.5 * self.train_eps / train_steps
        self.train_step_size = default_size if train_step_size is None else train_step_size
        self.eval_steps, self.test_steps = eval_steps, test_steps
        self.guard, self.guard_drop = guard, guard_drop
        self.val_robust_acc = MulticlassAccuracy(net.num_classes, average="micro", validate_args=False)
        self.test_robust_acc = MulticlassAccuracy(net.num_classes, average="micro", validate_args=False)
        self.normalization: tuple[list[float], list[float]] | None = None  # set in setup from the data module
        self.best_robust: float | None = None
        self.good_weights: dict[str, torch.Tensor] | None = None
        self.good_epoch: int | None = None
        self.guard_record: dict[str, Any] | None = None

    # --- the task contract ----------------------------------------------------------------------
    @classmethod
    @override
    def check_arguments(cls, arguments: dict[str, Any]) -> None:
        get = arguments.get
        if get("method", "pgd") not in METHODS:
            raise ValueError(f"task.method={get('method')} must be one of {', '.join(METHODS)}")
        check_eps(get("eps", 0.1), "task.eps")
        if get("train_eps") is not None:
            check_eps(get("train_eps"), "task.train_eps")
        elif not 0 < get("train_eps_scale", 1.2) <= 1 / max(get("eps", 0.1), 1e-12):
            raise ValueError(
                f"task.train_eps_scale={get('train_eps_scale')} must be positive and keep train_eps_scale * "
                f"task.eps={get('eps', 0.1)} in [0, 1]"
            )
        if not 0 <= get("alpha", 0.5) <= 1:
            raise ValueError(f"task.alpha={get('alpha')} must be in [0, 1] (the weight of the clean loss)")
        for key in ("train_steps", "eval_steps", "test_steps"):
            check_steps(get(key, 1), f"task.{key}")
        size = get("train_step_size")
        if size is not None and not size > 0:
            raise ValueError(f"task.train_step_size={size} must be positive (pixel units), or null for the default")
        if not 0 < get("guard_drop", 0.2) <= 1:
            raise ValueError(f"task.guard_drop={get('guard_drop')} must be in (0, 1] (a fall in val/robust_acc)")

    @classmethod
    @override
    def test_metric_names(cls) -> tuple[str, ...]:
        return ("test/acc", "test/robust_acc", "test/loss")

    @classmethod
    @override
    def monitorable_metric_names(cls) -> tuple[str, ...] | None:
        return (*(super().monitorable_metric_names() or ()), "val/robust_acc")

    @override
    def run_record(self) -> dict[str, Any]:
        return {
            "adversarial": {
                "method": self.method,
                "eps": self.eps,
                "train_eps": self.train_eps,
                "train_steps": self.train_steps,
                "train_step_size": self.train_step_size,
                "guard": self.guard_record or {"fired": False},
            }
        }

    # --- pixel space ----------------------------------------------------------------------------
    @override
    def setup(self, stage: str) -> None:
        datamodule = self.trainer.datamodule if self.trainer is not None else None
        if datamodule is not None:  # loaders passed alone (a second test domain) keep the first module's
            self.normalization = normalization_of(datamodule)

    def pixel_model(self) -> PixelModel:
        """The net seen from [0, 1] pixels (built per call: a compression step may replace `net`)."""
        return PixelModel(self.net, *(self.normalization or (None, None)))

    # --- training -------------------------------------------------------------------------------
    @override
    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch[0], batch[1]
        model = self.pixel_model()
        pixels = model.to_pixels(x)
        if self.method == "fgsm_mix":
            logits = self.net(x)
            adv_logits = model(fgsm(model, pixels, y, self.train_eps))
            loss = self.alpha * self.loss_fn(logits, y) + (1 - self.alpha) * self.loss_fn(adv_logits, y)
        else:  # pgd; fast is one step of train_step_size from a random start
            adv = pgd(model, pixels, y, self.train_eps, self.train_steps, self.train_step_size)
            logits = model(adv)
            loss = self.loss_fn(logits, y)
        self.count_correct(logits, y)  # train/acc: on what the loss trains on (clean for fgsm_mix)
        self.track_train_loss(loss)
        return loss

    # --- evaluation -----------------------------------------------------------------------------
    def _robust(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int, stage: str, steps: int) -> None:
        x, y = batch[0], batch[1]
        model = self.pixel_model()
        with seeded(batch_idx, x.device):  # the same random starts in every evaluation of a checkpoint
            adv = pgd(model, model.to_pixels(x), y, self.eps, steps, 2.5 * self.eps / steps)
        metric = getattr(self, f"{stage}_robust_acc")
        with torch.no_grad():
            metric.update(model(adv), y)
        self.log(f"{stage}/robust_acc", metric, prog_bar=stage == "val")

    @override
    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        super().validation_step(batch, batch_idx)
        self._robust(batch, batch_idx, "val", self.eval_steps)

    @override
    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        super().test_step(batch, batch_idx)
        self._robust(batch, batch_idx, "test", self.test_steps)

    # --- the catastrophic-overfitting guard ---------------------------------------------------------
    @override
    def on_validation_epoch_end(self) -> None:
        trainer = self.trainer
        if not self.guard or trainer.sanity_checking or trainer.state.fn != "fit":
            return
        self.check_collapse(float(self.val_robust_acc.compute()), trainer.current_epoch)

    def check_collapse(self, robust: float, epoch: int) -> bool:
        """Keep this epoch's weights as the last good ones, or, when `robust` fell more than guard_drop
        below the best so far, put the last good weights back and stop training (every DDP rank sees
        the same synced metric, so all decide alike). Returns whether the guard fired."""
        best = self.best_robust
        if best is not None and self.good_weights is not None and robust < best - self.guard_drop:
            self.net.load_state_dict(self.good_weights)
            self.guard_record = {
                "fired": True,
                "epoch": epoch,
                "robust_acc": robust,
                "best_robust_acc": best,
                "restored_epoch": self.good_epoch,
            }
            rank_zero_warn(
                f"catastrophic overfitting at epoch {epoch}: val/robust_acc fell to {robust:.4f} from "
                f"{best:.4f}; restored the weights of epoch {self.good_epoch} and stopped training"
            )
            if self._trainer is not None:
                self.trainer.should_stop = True
            return True
        self.best_robust = robust if self.best_robust is None else max(self.best_robust, robust)
        self.good_weights = {k: v.detach().clone() for k, v in self.net.state_dict().items()}
        self.good_epoch = epoch
        return False

    @override
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint[GUARD_KEY] = {
            "best_robust": self.best_robust,
            "record": self.guard_record,
            "good_epoch": self.good_epoch,
        }

    @override
    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        state = checkpoint.get(GUARD_KEY)
        if not state:
            return
        self.best_robust, self.guard_record = state["best_robust"], state["record"]
        self.good_epoch = state["good_epoch"]
        # The checkpoint's weights are those of its last validated epoch, good or already restored.
        prefix = f"{self.shipped_prefix()}."
        self.good_weights = copy.deepcopy(
            {k[len(prefix) :]: v for k, v in checkpoint["state_dict"].items() if k.startswith(prefix)}
        )
