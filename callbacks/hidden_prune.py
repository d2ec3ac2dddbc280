"""Hidden-node / filter pruning: remove the least important hidden units of Linear layers and filters
of Conv layers, and physically shrink them and every layer that consumes them (next layer's inputs,
BatchNorm, residual additions). The engine is torch-pruning's dependency graph; this callback adds
the schedule, the importance choice, and a record of the new shapes so checkpoints reload.

`amount` of the units of every prunable layer (the head's outputs, the classes, are kept) go in
`steps` rounds, one per epoch from `start_epoch`; each round's share is computed from the original
widths, so a resumed run prunes exactly as an uninterrupted one. Importance: `l1` / `l2` norm of a
unit's weights (all coupled weights in its group), or `activation`, the mean |activation| a unit
feeds its consumers on a batch of training data.
"""

from __future__ import annotations

import lightning.pytorch as pl
import torch
import torch_pruning as tp
from torch import nn
from typing_extensions import override

from callbacks.step import CompressionStep, Stage
from callbacks.surgery.folding import remove_masks, snapshot
from callbacks.surgery.structure import applied, rebuild_optimizers, record, shapes_of
from modules.nets import output_layer

__all__ = ["HiddenNodePruning", "IMPORTANCE", "prunable_layers", "round_ratio"]

IMPORTANCE = ("l1", "l2", "activation")


def prunable_layers(net: nn.Module) -> list[nn.Module]:
    return [m for m in net.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]


def round_ratio(amount: float, steps: int, done: int) -> float:
    """Share of the current units to remove in round `done + 1`, so that after round r the layers
    keep 1 - amount * r / steps of their original width."""
    kept_now, kept_next = 1 - amount * done / steps, 1 - amount * (done + 1) / steps
    return 1 - kept_next / kept_now


class HiddenNodePruning(CompressionStep):
    """Structured pruning of hidden units / filters with physical shrinking, on `pl_module.shipped_net`."""

    step = "hidden_prune"
    stage = Stage.STRUCTURE
    order_reason = "shrink layers by their weights' norms before factoring, masking or quantizing them"
    changes_shapes = True

    def __init__(
        self,
        amount: float = 0.5,
        start_epoch: int = 5,
        steps: int = 1,
        importance: str = "l1",
        scope: str = "layer",
        activation_samples: int = 1024,
    ) -> None:
        if not 0 <= amount < 1:
            raise ValueError(f"compress.hidden_prune.amount={amount} must be in [0, 1), e.g. 0.5")
        if start_epoch < 0 or steps < 1:
            raise ValueError(
                f"compress.hidden_prune.start_epoch={start_epoch} must be >= 0 and "
                f"compress.hidden_prune.steps={steps} >= 1"
            )
        if importance not in IMPORTANCE:
            raise ValueError(f"compress.hidden_prune.importance={importance!r} must be one of {', '.join(IMPORTANCE)}")
        if scope not in ("layer", "global"):
            raise ValueError(f"compress.hidden_prune.scope={scope!r} must be 'layer' or 'global'")
        if activation_samples < 1:
            raise ValueError(f"compress.hidden_prune.activation_samples={activation_samples} must be >= 1")
        self.amount, self.start_epoch, self.steps = amount, start_epoch, steps
        self.importance, self.scope, self.activation_samples = importance, scope, activation_samples
        self.before: nn.Module | None = None  # a copy of the net just before its first round

    @override
    def epochs(self) -> tuple[int, int]:
        """First and last epoch at which this step changes the net."""
        return self.start_epoch, self.start_epoch + self.steps - 1

    @override
    def check(self, net: nn.Module, max_epochs: int) -> None:
        """Start-up checks: rounds end before the budget does; the net has hidden units to prune."""
        if self.epochs()[1] >= max_epochs:
            raise ValueError(
                f"compress.hidden_prune: the last round is at epoch {self.epochs()[1]} "
                f"(start_epoch + steps - 1) but must be < trainer.max_epochs={max_epochs}"
            )
        if len(prunable_layers(net)) < 2:
            raise ValueError(
                "compress.hidden_prune: the net has no hidden layer to shrink (only its head); "
                "use a net with hidden layers, e.g. model=mlp"
            )

    @override
    def restructure(self, net: nn.Module) -> None:
        """What this step does to the net's shapes (a dry run on a copy at start-up): every round,
        by weight norm (the widths removed do not depend on the importance)."""
        example = torch.zeros(1, *net.input_shape)
        for done in range(self.steps):
            self.pruner(net, example, tp.importance.MagnitudeImportance(p=1), done).step()

    def pruner(
        self, net: nn.Module, example: torch.Tensor, importance: tp.importance.Importance, done: int
    ) -> tp.pruner.MetaPruner:
        return tp.pruner.MetaPruner(
            net,
            example,
            importance=importance,
            pruning_ratio=round_ratio(self.amount, self.steps, done),
            ignored_layers=[net.get_submodule(output_layer(net))],  # its outputs are the net's (the classes)
            global_pruning=self.scope == "global",
        )

    @override
    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        net = pl_module.shipped_net
        due = min(self.steps, trainer.current_epoch - self.start_epoch + 1)
        if due <= applied(net, self.step):
            return
        if self.before is None:
            self.before = snapshot(net)
        while applied(net, self.step) < due:
            self.prune_round(net, trainer)
        rebuild_optimizers(trainer)

    def prune_round(self, net: nn.Module, trainer: pl.Trainer) -> None:
        device = next(net.parameters()).device
        example = torch.zeros(1, *net.input_shape, device=device)
        training = net.training
        remove_masks(net)  # all-ones masks of a later pruning step (re-added by it): shrink plain weights
        net.eval()  # tracing runs a forward pass: keep BatchNorm statistics as they are
        if self.importance == "activation":
            importance = tp.importance.ActivationImportance()
            with importance.compute_importance(net), torch.no_grad():
                net(self.training_inputs(trainer).to(device))  # stores each unit's mean |activation|
        else:
            importance = tp.importance.MagnitudeImportance(p=1 if self.importance == "l1" else 2)
        pruner = self.pruner(net, example, importance, applied(net, self.step))
        pruner.step()
        net.train(training)
        record(net, {"kind": "resize", "step": self.step, "shapes": shapes_of(net)})

    def training_inputs(self, trainer: pl.Trainer) -> torch.Tensor:
        """The first `activation_samples` inputs of the training loader, as one batch."""
        inputs, count = [], 0
        datamodule = trainer.datamodule
        for batch in trainer.train_dataloader:
            if datamodule is not None:  # the batch as training sees it (augmented, normalized: recipes/data/base.py)
                batch = datamodule.on_after_batch_transfer(batch, 0)
            inputs.append(batch[0])
            count += len(batch[0])
            if count >= self.activation_samples:
                break
        return torch.cat(inputs)[: self.activation_samples]
