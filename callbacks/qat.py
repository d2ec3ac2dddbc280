"""Quantization-aware training (Jacob et al. 2018; Krishnamoorthi 2018): fp32 training first, then
from `start_epoch` every Linear / Conv2d computes with fake-quantized int8 weights (per-channel
symmetric) and uint8 activations (per-tensor affine), BatchNorm folded in with frozen statistics,
so the net learns to live with the rounding; for the last `freeze_epochs` epochs the activation
observers are frozen too, so the final epochs train against the exact parameters that ship. The
mechanics (fake-quant forward, BatchNorm folding) are callbacks/surgery/quantize.py, the int8
export module callbacks/surgery/int8_layers.py.

The quantization buffers are added to every layer in `setup`, before Lightning restores a
checkpoint or builds the optimizer (as the pruning masks are), and the phase is set from the epoch at
each epoch start, so a run resumed at any epoch has the same keys and the same phase as the
uninterrupted one.
"""

from __future__ import annotations

import lightning.pytorch as pl
from torch import nn
from typing_extensions import override

from callbacks.step import CompressionStep, Stage
from callbacks.surgery.folding import snapshot
from callbacks.surgery.int8_layers import shipped_bytes
from callbacks.surgery.quantize import Phase, instrument, links, quantized_layers, set_phase
from callbacks.surgery.weights import CIRCULANT, LAYERS, weight_targets

__all__ = [
    "COUPLING",
    "QuantizationAwareTraining",
    "SUPPORTED_BITS",
    "VALUE_STEPS",
    "check_bits",
    "check_quantizable",
    "recurrent_layers",
]

SUPPORTED_BITS = (8,)
# why a quantization step cannot run on a net cut into stages on different ranks (strategy=pipeline)
COUPLING = (
    "ties each layer to its neighbours (its input takes the previous layer's observed output range, a "
    "BatchNorm is folded into the layer before it), but each rank would observe and calibrate only its own stage"
)
VALUE_STEPS = {
    "binary": "both set how the weights are stored",
    "ternary": "both set how the weights are stored",
    "kmeans": "both set how the weights are stored",
}


def check_bits(step: str, bits: int) -> None:
    if bits not in SUPPORTED_BITS:
        raise ValueError(
            f"compress.{step}.bits={bits} is not supported: the int8 export (onnxruntime's int8 "
            "kernels) takes 8-bit weights and activations only; set compress.{step}.bits=8".replace("{step}", step)
        )


def recurrent_layers(net: nn.Module) -> list[str]:
    """Names of `net`'s modules holding recurrent matrices (callbacks/surgery/weights.py names them)."""
    names = [
        label.rsplit(".", 1)[0]
        for label, module, _ in weight_targets(net)
        if not isinstance(module, (*LAYERS, *CIRCULANT))
    ]
    return list(dict.fromkeys(names))


def check_quantizable(step: str, net: nn.Module) -> None:
    """The net has a Linear / Conv2d layer, no recurrent layer (fake quantization covers Linear / Conv2d
    only: an LSTM would ship in float under an int8 report), and torch.fx can trace it where it has
    BatchNorms to fold (callbacks/surgery/quantize.py: links)."""
    circulant = [name for name, module in net.named_modules() if isinstance(module, CIRCULANT)]
    if circulant:
        raise ValueError(
            f"compress=[{step}] cannot quantize the block-circulant layers ({', '.join(circulant)}): their FFT "
            f"products have no int8 kernels; drop {step}, or drop circulant and quantize the dense net"
        )
    recurrent = recurrent_layers(net)
    if recurrent:
        raise ValueError(
            f"compress=[{step}] cannot quantize {type(net).__name__}'s recurrent layer ({', '.join(recurrent)}): "
            f"{step} fake-quantizes Linear / Conv2d only; drop {step} and use export=dynamic for int8 "
            "(onnxruntime dynamic quantization)"
        )
    if not any(isinstance(m, (nn.Linear, nn.Conv2d)) for m in net.modules()):
        raise ValueError(f"compress.{step}: {type(net).__name__} has no Linear / Conv2d layer to quantize")
    try:
        links(net)
    except ValueError as err:
        raise ValueError(
            f"compress.{step}: {err}: BatchNorm folding and ReLU fusion need a traceable net (no data-dependent "
            "control flow in forward); use a model of modules/nets or drop this step"
        ) from None


class QuantizationAwareTraining(CompressionStep):
    """Fake-quantized int8 training of `pl_module.shipped_net` from `start_epoch` to the end."""

    step = "qat"
    stage = Stage.PRECISION
    order_in_stage = 1  # after a step that only chooses the values (none yet): quantize last
    order_reason = "quantize the weights that ship last"
    excludes = VALUE_STEPS
    couples_layers = COUPLING
    encoding = "int8 weights (1 byte, nonzeros + 1-bit mask where smaller) + per-channel fp32 scale and int8 zero point"

    def __init__(
        self,
        max_epochs: int,
        start_epoch: int | None = None,
        epochs: int = 3,
        freeze_epochs: int = 1,
        bits: int = 8,
        observer_average: float = 0.01,
    ) -> None:
        check_bits(self.step, bits)
        if epochs < 1:
            raise ValueError(f"compress.qat.epochs={epochs} must be >= 1 (the fake-quantized epochs at the end)")
        self.start_epoch = max_epochs - epochs if start_epoch is None else start_epoch
        if self.start_epoch < 0:
            raise ValueError(
                f"compress.qat.start_epoch={self.start_epoch} must be >= 0; lower compress.qat.epochs "
                f"or raise trainer.max_epochs={max_epochs}"
            )
        if self.start_epoch >= max_epochs:
            raise ValueError(
                f"compress.qat.start_epoch={self.start_epoch} must be < trainer.max_epochs={max_epochs} "
                "so the net trains fake-quantized"
            )
        if not 0 <= freeze_epochs < max_epochs - self.start_epoch:
            raise ValueError(
                f"compress.qat.freeze_epochs={freeze_epochs} must be in [0, {max_epochs - self.start_epoch}) "
                f"(the QAT epochs from start_epoch={self.start_epoch} to trainer.max_epochs={max_epochs}), "
                "so the observers see at least one epoch"
            )
        if not 0 < observer_average <= 1:
            raise ValueError(f"compress.qat.observer_average={observer_average} must be in (0, 1], e.g. 0.01")
        self.max_epochs, self.freeze_epoch = max_epochs, max_epochs - freeze_epochs
        self.observer_average = observer_average
        self.before: nn.Module | None = None  # the fp32 net just before fake quantization began

    @override
    def epochs(self) -> tuple[int, int]:
        """First and last epoch at which this step changes the net (starts, then freezes observers)."""
        return self.start_epoch, self.freeze_epoch

    @override
    def check(self, net: nn.Module, max_epochs: int) -> None:
        """Start-up check: the net is quantizable (the schedule was checked against the budget above)."""
        check_quantizable(self.step, net)

    def phase(self, epoch: int) -> Phase:
        if epoch < self.start_epoch:
            return Phase.FLOAT
        return Phase.OBSERVE if epoch < self.freeze_epoch else Phase.FROZEN

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit":
            instrument(pl_module.shipped_net, self.observer_average)

    @override
    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        net = pl_module.shipped_net
        instrument(net, self.observer_average)  # layers an earlier step created this epoch
        # fast_dev_run smoke-tests the whole path: its one epoch runs as the first QAT epoch
        epoch = self.start_epoch if trainer.fast_dev_run else trainer.current_epoch
        phase = self.phase(epoch)
        if phase != Phase.FLOAT and self.before is None and epoch == self.start_epoch:
            self.before = snapshot(net)
        set_phase(net, phase)

    @override
    def encoded_bytes(self, net: nn.Module) -> dict[str, int]:
        """The int8 encoding of every quantized layer (callbacks/surgery/int8_layers.py: shipped_bytes)."""
        return shipped_bytes(net) if quantized_layers(net) else {}
