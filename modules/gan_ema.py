"""An exponential moving average of a net's parameters (the GAN's generator), kept by parameter name.

Averaging the generator's weights over the last few hundred updates damps the oscillation of the
adversarial game and gives better samples than the last weights (Yazici et al. 2019, "The Unusual
Effectiveness of Averaging in GAN Training"; Karras et al. use it in ProGAN/StyleGAN). Lightning's
own EMAWeightAveraging averages a copy of the whole module by position, which a compression step
breaks (SVD factoring changes the layers, pruning renames `weight` to `weight_orig` and adds masks
that must not be averaged); here each parameter is averaged under its name, and a parameter that is
new or has a new shape (after such a step) starts its average from its current value. Buffers
(BatchNorm statistics, pruning masks) are never averaged: the net's own are used.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

__all__ = ["ParameterAverage"]


class ParameterAverage:
    """EMA `avg <- decay * avg + (1 - decay) * param` of `net`'s parameters, by name."""

    def __init__(self, net: nn.Module, decay: float) -> None:
        if not 0 < decay < 1:
            raise ValueError(f"task.ema_decay={decay} must be in (0, 1) (0 turns the average off)")
        self.net, self.decay = net, decay
        self.average: dict[str, torch.Tensor] = {}

    @torch.no_grad()
    def update(self) -> None:
        """Fold the current parameters in; names gone from the net are dropped, new ones start afresh."""
        previous, self.average = self.average, {}
        for name, param in self.net.named_parameters():
            value = previous.get(name)
            if value is None or value.shape != param.shape:
                self.average[name] = param.detach().clone()
            else:
                self.average[name] = value.to(param.device).lerp_(param.detach(), 1 - self.decay)

    @contextmanager
    def swapped_in(self) -> Iterator[None]:
        """The averaged values in the net's parameters for the block, the trained ones restored after."""
        params = dict(self.net.named_parameters())
        pairs = [(params[name], value) for name, value in self.average.items() if name in params]
        trained = [param.detach().clone() for param, _ in pairs]
        with torch.no_grad():
            for param, value in pairs:
                param.copy_(value)
        try:
            yield
        finally:
            with torch.no_grad():
                for (param, _), value in zip(pairs, trained):
                    param.copy_(value)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {name: value.detach().clone() for name, value in self.average.items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.average = {name: value.clone() for name, value in state.items()}

    def into_checkpoint(self, checkpoint: dict[str, Any], key: str, prefix: str) -> None:
        """Put the averaged values in place of the trained ones in the checkpoint's state dict (the
        net's parameters under `prefix`), and under `key` both the average and the trained values
        they replaced, for an exact resume. Nothing before the first update."""
        if not self.average:
            return
        state, average = checkpoint["state_dict"], self.state_dict()
        checkpoint[key] = {
            "average": average,
            "trained": {name: state[prefix + name] for name in average if prefix + name in state},
        }
        state.update({prefix + name: value for name, value in average.items() if prefix + name in state})

    def from_checkpoint(self, checkpoint: dict[str, Any], key: str, prefix: str) -> None:
        """Undo `into_checkpoint` in a checkpoint being resumed: the trained values back in its state
        dict, the average restored (nothing when it holds none)."""
        saved = checkpoint.get(key)
        if saved is None:
            return
        checkpoint["state_dict"].update({prefix + name: value for name, value in saved["trained"].items()})
        self.load_state_dict(saved["average"])
