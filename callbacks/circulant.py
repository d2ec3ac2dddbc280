"""Block-circulant projection (CirCNN, Ding et al. 2017): at `epoch`, each chosen dense Linear / Conv2d
becomes the nearest block-circulant layer in Frobenius norm (each b x b block's entries averaged along
its circulant diagonals: modules/nets/block_circulant.py), which multiplies by FFT and stores b times
fewer weights; training then goes on, fine-tuning the vectors.

By default the first layer (it sees the raw input) and the head (the classes) stay dense, as CirCNN
does; `include_first` / `include_head` change that. The edit is recorded on the net, so resume,
`recipes.evaluate` and `recipes.export` rebuild the block-circulant layers before loading weights.

Order in a plan: after hidden-node pruning and instead of svd (both replace a dense matrix by a
structured one); before prune, which then zeroes entries of the vectors (whole circulant diagonals):
projecting an already pruned or quantized matrix would make it dense and unquantized again.
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
from torch import nn
from typing_extensions import override

from callbacks.step import CompressionStep, Stage
from callbacks.surgery.folding import snapshot
from callbacks.surgery.structure import applied, circulant, rebuild_optimizers, record, set_module
from modules.nets import output_layer
from modules.nets.block_circulant import check_block

__all__ = ["BlockCirculantProjection", "projectable"]


def projectable(layer: nn.Module) -> bool:
    """A Linear, or a square-kernel Conv2d without groups or dilation and with an even stride and padding."""
    if isinstance(layer, nn.Linear):
        return True
    return (
        isinstance(layer, nn.Conv2d)
        and layer.kernel_size[0] == layer.kernel_size[1]
        and layer.groups == 1
        and layer.dilation == (1, 1)
        and layer.stride[0] == layer.stride[1]
        and not isinstance(layer.padding, str)
        and layer.padding[0] == layer.padding[1]
    )


class BlockCirculantProjection(CompressionStep):
    """Replace the net's dense layers by their nearest block-circulant layers at the start of `epoch`."""

    step = "circulant"
    stage = Stage.STRUCTURE
    order_in_stage = 2  # after hidden-node pruning: project the layers that remain
    order_reason = "projecting a pruned or quantized matrix onto circulant blocks makes it dense again"
    excludes = {"svd": "both replace the same dense matrices by a structured form: pick one"}
    changes_shapes = True

    def __init__(self, epoch: int = 10, block: int = 16, include_first: bool = False, include_head: bool = False):
        if epoch < 0:
            raise ValueError(f"compress.circulant.epoch={epoch} must be >= 0")
        if block < 2:
            raise ValueError(f"compress.circulant.block={block} must be >= 2 (a 1 x 1 block is the dense matrix)")
        self.epoch, self.block = epoch, block
        self.include_first, self.include_head = include_first, include_head
        self.before: nn.Module | None = None  # a copy of the net just before the projection

    @override
    def epochs(self) -> tuple[int, int]:
        """First and last epoch at which this step changes the net."""
        return self.epoch, self.epoch

    def targets(self, net: nn.Module) -> dict[str, nn.Module]:
        """The layers to project, by name: every projectable Linear / Conv2d but the first and the head
        (unless asked)."""
        layers = {name: m for name, m in net.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))}
        if not layers:
            return {}
        first, head = next(iter(layers)), output_layer(net)
        skipped = set()
        if not self.include_first:
            skipped.add(first)
        if not self.include_head:
            skipped.add(head)
        return {name: m for name, m in layers.items() if name not in skipped and projectable(m)}

    @override
    def check(self, net: nn.Module, max_epochs: int) -> None:
        """Start-up checks: the schedule fits the budget, there is a layer to project, the block fits each."""
        if self.epoch >= max_epochs:
            raise ValueError(
                f"compress.circulant.epoch={self.epoch} must be < trainer.max_epochs={max_epochs} "
                "so the circulant vectors get fine-tuned"
            )
        targets = self.targets(net)
        if not targets:
            raise ValueError(
                "compress.circulant: the net has no Linear / Conv2d layer to project besides its first layer and "
                "its head; set compress.circulant.include_first=true or include_head=true"
            )
        for name, layer in targets.items():
            out_size, in_size = layer.weight.shape[:2]
            try:
                check_block(self.block, in_size, out_size, "compress.circulant.block")
            except ValueError as err:
                raise ValueError(f"{err} (layer net.{name}); lower it") from None

    @override
    def restructure(self, net: nn.Module) -> None:
        """What this step does to the net's shapes (a dry run on a copy at start-up)."""
        self.project(net)

    def project(self, net: nn.Module) -> dict[str, int]:
        """Project every target layer; returns the block size used per layer."""
        blocks = {}
        for name, layer in self.targets(net).items():
            set_module(net, name, circulant(layer, self.block))
            blocks[name] = self.block
        record(net, {"kind": "circulant", "step": self.step, "blocks": blocks})
        return blocks

    @override
    def results(self, net: nn.Module, dense_bytes: int) -> dict[str, Any]:
        """`circulant_blocks`: the block size of each projected layer."""
        for edit in getattr(net, "structure_edits", []):
            if edit.get("kind") == "circulant":
                return {"circulant_blocks": dict(edit["blocks"])}
        return {}

    @override
    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.current_epoch < self.epoch or applied(pl_module.shipped_net, self.step):
            return
        self.before = snapshot(pl_module.shipped_net)
        self.project(pl_module.shipped_net)
        rebuild_optimizers(trainer)
