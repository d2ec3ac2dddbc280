"""Post-training static quantization, the baseline QAT is compared with: the net trains in fp32 for
the whole budget; after the last training batch, `calibration_batches` training batches run through
the net (no gradient step) so each Linear / Conv2d records the min / max of its input and output,
and from then on it computes fake-quantized int8 exactly as a QAT net does (callbacks/surgery/quantize.py),
before the last validation and checkpoint. The same int8 export follows."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch
from torch import nn
from typing_extensions import override

from callbacks.qat import COUPLING, VALUE_STEPS, check_bits, check_quantizable
from callbacks.step import CompressionStep, Stage
from callbacks.surgery.folding import snapshot
from callbacks.surgery.int8_layers import shipped_bytes
from callbacks.surgery.quantize import Phase, instrument, quantized_layers, set_phase

__all__ = ["PostTrainingQuantization"]


class PostTrainingQuantization(CompressionStep):
    """Calibrate and quantize `pl_module.shipped_net` to int8 at the end of the last training epoch."""

    step = "ptq"
    stage = Stage.PRECISION
    order_in_stage = 1
    order_reason = "quantize the weights that ship last"
    excludes = {**VALUE_STEPS, "qat": "both quantize the net (QAT trains it quantized, PTQ does not)"}
    couples_layers = COUPLING
    encoding = "int8 weights (1 byte, nonzeros + 1-bit mask where smaller) + per-channel fp32 scale and int8 zero point"

    def __init__(self, max_epochs: int, calibration_batches: int = 10, bits: int = 8) -> None:
        check_bits(self.step, bits)
        if calibration_batches < 1:
            raise ValueError(f"compress.ptq.calibration_batches={calibration_batches} must be >= 1, e.g. 10")
        self.max_epochs, self.calibration_batches = max_epochs, calibration_batches
        self.before: nn.Module | None = None  # the fp32 net before calibration

    @override
    def epochs(self) -> tuple[int, int]:
        """First and last epoch at which this step changes the net: the end of the last one."""
        return self.max_epochs - 1, self.max_epochs - 1

    @override
    def check(self, net: nn.Module, max_epochs: int) -> None:
        """Start-up check: the net is quantizable."""
        check_quantizable(self.step, net)

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit":
            instrument(pl_module.shipped_net, average=None)

    @override
    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        instrument(pl_module.shipped_net, average=None)  # layers an earlier step created this epoch

    @override
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        final_epoch = trainer.fast_dev_run or trainer.current_epoch == self.max_epochs - 1  # a smoke test's one epoch
        last = final_epoch and batch_idx == trainer.num_training_batches - 1
        if last and not trainer.sanity_checking:
            self.calibrate(trainer, pl_module.shipped_net)

    def calibrate(self, trainer: pl.Trainer, net: nn.Module) -> None:
        """Observe the activation ranges on the first `calibration_batches` training batches (dropout
        and BatchNorm in eval mode, no gradients), then freeze them."""
        self.before = snapshot(net)
        training = net.training
        net.eval()
        layers = quantized_layers(net).values()
        for layer in layers:
            layer.train()  # a layer observes its ranges in training mode only
        set_phase(net, Phase.OBSERVE)
        device = next(net.parameters()).device
        with torch.no_grad():
            for index, batch in enumerate(trainer.train_dataloader):
                if index >= self.calibration_batches:
                    break
                net(batch[0].to(device))
        set_phase(net, Phase.FROZEN)
        net.train(training)

    @override
    def encoded_bytes(self, net: nn.Module) -> dict[str, int]:
        """The int8 encoding of every quantized layer (callbacks/surgery/int8_layers.py: shipped_bytes)."""
        return shipped_bytes(net) if quantized_layers(net) else {}
