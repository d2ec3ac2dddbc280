"""Binary weights: BinaryConnect (Courbariaux et al. 2015) with XNOR-Net's per-output-channel scale
(Rastegari et al. 2016) as an option.

The forward pass uses `sign(W)` (0 counts as +1), times `alpha = mean |W|` of each output channel
with `scale=channel`; the backward pass hands the gradient straight through to the real-valued
latent weights where |W| <= 1 (the derivative of hardtanh), and the latent weights are clipped to
[-1, 1] after every optimizer step, as the paper does. The first and last layers stay at full
precision by default (`skip_first_last`), as both papers keep them. Each binary layer ships as one
bit per weight (plus its fp32 scales): callbacks/formats/dcz.py packs it.
"""

from __future__ import annotations

import torch
from torch import nn
from typing_extensions import override

from callbacks.parametrized import HiddenLayerStep, LatentWeight

__all__ = ["BinaryWeight", "BinaryWeights", "SCALES", "SignSTE", "channel_scale"]

SCALES = ("none", "channel")


class SignSTE(torch.autograd.Function):
    """sign(w) in {-1, +1}; backward: the gradient where |w| <= 1, zero elsewhere (clipped identity)."""

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, weight: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(weight)
        return torch.where(weight >= 0, 1.0, -1.0).to(weight.dtype)

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor) -> torch.Tensor:
        (weight,) = ctx.saved_tensors
        return grad * (weight.abs() <= 1).to(grad.dtype)


def channel_scale(weight: torch.Tensor) -> torch.Tensor:
    """XNOR-Net's alpha: mean |W| of each output channel, shaped to broadcast over `weight`."""
    return weight.abs().flatten(1).mean(1).view(-1, *[1] * (weight.dim() - 1))


class BinaryWeight(LatentWeight):
    """`latent -> sign(latent)` (times the channel scale with `scale=channel`)."""

    def __init__(self, owner: str, shape: torch.Size, scale: str) -> None:
        super().__init__(owner, shape)
        self.scale = scale

    @override
    def compute(self, latent: torch.Tensor) -> torch.Tensor:
        signs = SignSTE.apply(latent)
        return signs * channel_scale(latent) if self.scale == "channel" else signs

    @override
    @torch.no_grad()
    def activate(self, latent: torch.Tensor, weight: torch.Tensor) -> None:
        latent.clamp_(-1, 1)
        super().activate(latent, weight)

    @override
    def after_step(self, latent: torch.Tensor) -> None:
        latent.clamp_(-1, 1)  # BinaryConnect's clipping of the real-valued weights


class BinaryWeights(HiddenLayerStep):
    """BinaryConnect / XNOR weights on every Linear / Conv2d but (by default) the first and last."""

    step = "binary"
    order_in_stage = 0
    order_reason = "binarize the weights first; weight sharing then clusters the layers left at full precision"
    excludes = {**HiddenLayerStep.excludes, "ternary": "both set the hidden layers' weights to a few values"}

    def __init__(self, start_epoch: int = 0, scale: str = "none", skip_first_last: bool = True) -> None:
        if scale not in SCALES:
            raise ValueError(
                f"compress.binary.scale={scale!r} must be 'none' (BinaryConnect, +-1) or 'channel' "
                "(XNOR-Net, +-mean |W| per output channel)"
            )
        super().__init__(start_epoch, skip_first_last)
        self.scale = scale

    @override
    def make(self, module: nn.Module, latent: torch.Tensor) -> LatentWeight:
        return BinaryWeight(self.step, latent.shape, self.scale)
