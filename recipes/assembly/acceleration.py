"""The net's GPU-path options, set under `model` but not passed to the net's constructor:

- `model.channels_last=true`: 4-D weights and inputs in channels-last (NHWC) memory layout, which
  tensor cores and cuDNN's fastest convolution kernels use (a 4-D input is converted as it enters
  the net); nets without convolutions are unaffected.
- `model.compile=true`: the net's forward is compiled with `torch.compile` (TorchDynamo + Inductor)
  for the fit, training and validation; the test, export and `recipes.evaluate` run the eager net,
  so what ships is exactly what the config builds. On a CPU, an LSTMP (`model.proj_size`) compiles
  its step-by-step loop on the same weights (TorchDynamo's `allow_rnn`, on for the fit): faster per
  step than torch's native LSTMP path, which oneDNN does not cover (docs/sequence.md#speed).
"""

from __future__ import annotations

import copy
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from omegaconf import DictConfig, open_dict
from torch import nn
from typing_extensions import override

from modules.nets.lstm import compiles_stepwise
from modules.task import Task
from recipes.errors import RecipeError

__all__ = ["CompileNet", "OPTIONS", "model_options", "to_channels_last"]

OPTIONS = ("compile", "channels_last")


def model_options(model: DictConfig) -> tuple[DictConfig, dict[str, bool]]:
    """The model node without the options (what the net's constructor takes), and the options:
    false where absent (an older checkpoint's config)."""
    options = {}
    for name in OPTIONS:
        value = model.get(name, False)
        if not isinstance(value, bool):
            raise RecipeError(f"model.{name}={value!r} must be true or false")
        options[name] = value
    node = copy.copy(model)  # shallow: keeps interpolations to the root config working
    with open_dict(node):
        for name in OPTIONS:
            node.pop(name, None)
    return node, options


def _channels_last_input(module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
    first = args[0] if args else None
    if isinstance(first, torch.Tensor) and first.dim() == 4:
        return (first.contiguous(memory_format=torch.channels_last), *args[1:])
    return args


def to_channels_last(net: nn.Module) -> nn.Module:
    """`net` with its 4-D weights, and every 4-D input it receives, in channels-last layout."""
    net.to(memory_format=torch.channels_last)
    net.register_forward_pre_hook(_channels_last_input)
    return net


class CompileNet(Callback):
    """Compiles the shipped net's forward (nn.Module.compile: the weights and their names stay as
    they are, so checkpoints do not change) when the fit starts, and restores the eager forward when
    it ends. A compression step that reshapes the net triggers a recompilation (Dynamo's guards)."""

    def __init__(self) -> None:
        super().__init__()
        self._allow_rnn: bool | None = None  # dynamo's setting before the fit, while this callback changed it

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if isinstance(pl_module, Task):
            if pl_module.device.type == "cpu" and compiles_stepwise(pl_module.shipped_net):  # GPU: cuDNN's LSTMP
                self._allow_rnn, torch._dynamo.config.allow_rnn = torch._dynamo.config.allow_rnn, True
            pl_module.shipped_net.compile()

    @override
    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if isinstance(pl_module, Task):
            pl_module.shipped_net._compiled_call_impl = None  # what nn.Module.compile set: eager again
        self._restore_dynamo()

    @override
    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self._restore_dynamo()

    def _restore_dynamo(self) -> None:
        if self._allow_rnn is not None:
            torch._dynamo.config.allow_rnn, self._allow_rnn = self._allow_rnn, None
