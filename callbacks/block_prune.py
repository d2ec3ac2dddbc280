"""Block pruning: remove whole blocks of a net built of repeated ones. At `epoch`, each removable block
is scored by how much the validation loss rises when the block is replaced by the identity (a block
whose removal barely hurts does little to separate the features); the `amount` least important ones
are then deleted from the net (fewer modules, FLOPs and exported nodes), and training goes on,
fine-tuning the rest.

Removable blocks, whose input and output shapes are equal so the identity can stand in:
- a residual block without a downsampling shortcut (torchvision's BasicBlock / Bottleneck in resnet18);
- a transformer block (modules/nets/transformer.py: PreNormBlock);
- a conv-BN-ReLU block whose convolution keeps the channels and the size (ConvNet with convs_per_stage > 1);
- an MLP's hidden layer of width w -> w, with the activation, BatchNorm and dropout that follow it.
A downsampling block changes the shape: it is kept, and the report says so. The edit (the names of the
removed modules) is recorded on the net, so resume, `recipes.evaluate` and `recipes.export` delete the
same modules from a freshly built net before loading weights.
"""

from __future__ import annotations

import math
from typing import Any

import lightning.pytorch as pl
import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.modules.utils import _pair
from torchvision.models.resnet import BasicBlock, Bottleneck
from typing_extensions import override

from callbacks.step import CompressionStep, Stage
from callbacks.surgery.folding import snapshot
from callbacks.surgery.structure import applied, rebuild_optimizers, record, remove_modules
from modules.nets import net_flops
from modules.nets.block_circulant import BlockCirculantConv2d, BlockCirculantLinear
from modules.nets.mlp import MLP
from modules.nets.transformer import PreNormBlock

__all__ = ["BlockPruning", "removable_blocks"]

LINEARS = (nn.Linear, BlockCirculantLinear)  # an MLP's layers, dense or block-circulant


def _keeps_shape(block: nn.Module) -> bool | None:
    """True: the identity can replace `block`; False: it downsamples or changes the width; None: not a block."""
    if isinstance(block, (BasicBlock, Bottleneck)):
        return block.downsample is None
    if isinstance(block, PreNormBlock):
        return True
    children = list(block.children()) if isinstance(block, nn.Sequential) else []
    convs = (nn.Conv2d, BlockCirculantConv2d)
    if children and isinstance(children[0], convs) and any(isinstance(c, nn.BatchNorm2d) for c in children):
        conv = children[0]
        same = _pair(conv.stride) == (1, 1) and _pair(conv.padding) == (1, 1)
        return conv.in_channels == conv.out_channels and same
    return None


def _mlp_units(net: nn.Module, head: str) -> tuple[dict[str, list[str]], dict[str, str]]:
    """An MLP's hidden layers of width w -> w, each with the modules after it up to the next Linear."""
    if not isinstance(net, MLP):
        return {}, {}
    names = list(net._modules)
    units, kept = {}, {}
    for i, name in enumerate(names):
        layer = net._modules[name]
        if not isinstance(layer, LINEARS) or name == head:
            continue
        tail = []
        for later in names[i + 1 :]:
            if isinstance(net._modules[later], LINEARS):
                break
            tail.append(later)
        if layer.in_features == layer.out_features:
            units[name] = [name, *tail]
        else:
            kept[name] = f"a {layer.in_features} -> {layer.out_features} layer changes the width"
    return units, kept


def removable_blocks(net: nn.Module) -> tuple[dict[str, list[str]], dict[str, str]]:
    """(removable blocks: name -> the module names deleting it removes, kept blocks: name -> why)."""
    head = [name for name, m in net.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))][-1:]
    units, kept = _mlp_units(net, head[0] if head else "")
    for name, module in net.named_modules():
        keeps = _keeps_shape(module) if name else None
        if keeps:
            units[name] = [name]
        elif keeps is False:
            kept[name] = "it downsamples or changes the channels: the identity cannot stand in for it"
    return units, kept


class BlockPruning(CompressionStep):
    """Delete the `amount` least important removable blocks at the start of `epoch`."""

    step = "block_prune"
    stage = Stage.STRUCTURE
    order_in_stage = -1  # first: score and remove whole blocks before their layers are shrunk or factored
    order_reason = "whole blocks are scored and removed before the layers left are shrunk, factored or masked"
    changes_shapes = True

    def __init__(self, amount: float = 0.33, epoch: int = 10, batches: int = 8) -> None:
        if not 0 < amount < 1:
            raise ValueError(f"compress.block_prune.amount={amount} must be in (0, 1), e.g. 0.33")
        if epoch < 0:
            raise ValueError(f"compress.block_prune.epoch={epoch} must be >= 0")
        if batches < 1:
            raise ValueError(f"compress.block_prune.batches={batches} must be >= 1")
        self.amount, self.epoch, self.batches = amount, epoch, batches
        self.scores: dict[str, float] = {}  # loss increase of each removable block, from the last scoring
        self.flops: dict[str, int] = {}  # FLOPs of one sample's forward before and after the removal
        self.kept: dict[str, str] = {}
        self.before: nn.Module | None = None

    @override
    def epochs(self) -> tuple[int, int]:
        """First and last epoch at which this step changes the net."""
        return self.epoch, self.epoch

    def count(self, net: nn.Module) -> int:
        """How many blocks `amount` removes (at least one)."""
        return max(1, math.floor(self.amount * len(removable_blocks(net)[0]) + 0.5))

    @override
    def check(self, net: nn.Module, max_epochs: int) -> None:
        """Start-up checks: the schedule fits the budget, the net has a removable block, one is kept."""
        if self.epoch >= max_epochs:
            raise ValueError(
                f"compress.block_prune.epoch={self.epoch} must be < trainer.max_epochs={max_epochs} "
                "so the blocks left get fine-tuned"
            )
        units, kept = removable_blocks(net)
        if not units:
            why = f" (kept: {', '.join(f'{k}: {v}' for k, v in kept.items())})" if kept else ""
            raise ValueError(
                f"compress.block_prune: {type(net).__name__} has no removable block (a residual or transformer "
                f"block, a conv block or an MLP layer that keeps its shape){why}; drop block_prune"
            )
        if self.count(net) >= len(units):
            raise ValueError(
                f"compress.block_prune.amount={self.amount} removes all {len(units)} removable blocks of "
                f"{type(net).__name__}; lower it (e.g. {1 / 3:.2f})"
            )

    @override
    def restructure(self, net: nn.Module) -> None:
        """The net after this step (a dry run on a copy at start-up, for the checks of the steps after it):
        the scores that pick the blocks come from training, so the last removable blocks stand in."""
        units = removable_blocks(net)[0]
        self.remove(net, list(units)[-self.count(net) :])

    def remove(self, net: nn.Module, names: list[str]) -> None:
        units = removable_blocks(net)[0]
        modules = [module for name in names for module in units[name]]
        remove_modules(net, modules)
        record(net, {"kind": "remove", "step": self.step, "modules": modules})

    def validation_batches(self, trainer: pl.Trainer) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The first `batches` validation batches, as the training step sees them."""
        datamodule = trainer.datamodule
        batches = []
        for batch in datamodule.val_dataloader():
            batches.append(datamodule.on_after_batch_transfer(batch, 0))
            if len(batches) == self.batches:
                break
        return batches

    def score(self, net: nn.Module, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> dict[str, float]:
        """Validation-loss increase of each removable block replaced by the identity (mean cross-entropy
        over the batches; for a language model, over every step)."""
        device = next(net.parameters()).device
        training = net.training
        net.eval()

        def loss() -> float:
            total, count = 0.0, 0
            with torch.no_grad():
                for x, y in batches:
                    logits = net(x.to(device))
                    total += F.cross_entropy(logits.flatten(0, -2), y.to(device).flatten(), reduction="sum").item()
                    count += y.numel()
            return total / count

        base = loss()
        scores = {}
        for name, members in removable_blocks(net)[0].items():
            # every member passes its input on: the block (a layer with its activation) is the identity
            hooks = [net.get_submodule(m).register_forward_hook(lambda m, args, out: args[0]) for m in members]
            scores[name] = loss() - base
            for hook in hooks:
                hook.remove()
        net.train(training)
        return scores

    @override
    def results(self, net: nn.Module, dense_bytes: int) -> dict[str, Any]:
        """The removed modules, each removable block's loss increase, and the blocks kept and why."""
        removed = [
            m for edit in getattr(net, "structure_edits", []) if edit.get("step") == self.step for m in edit["modules"]
        ]
        report: dict[str, Any] = {"block_prune_removed": removed}
        if self.scores:
            report["block_prune_loss_increase"] = self.scores
            report["block_prune_flops"] = self.flops
        if self.kept:
            report["block_prune_kept"] = self.kept
        return report

    @override
    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.current_epoch < self.epoch or applied(pl_module.shipped_net, self.step):
            return
        net = pl_module.shipped_net
        self.before = snapshot(net)
        self.kept = removable_blocks(net)[1]
        batches = self.validation_batches(trainer)
        self.scores = self.score(net, batches)
        least = sorted(self.scores, key=self.scores.get)[: self.count(net)]
        sample = batches[0][0][:1].to(next(net.parameters()).device)
        before = net_flops(net, sample)
        self.remove(net, least)
        self.flops = {"before": before, "after": net_flops(net, sample)}
        rebuild_optimizers(trainer)
