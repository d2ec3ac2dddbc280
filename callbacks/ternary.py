"""Ternary weights: TWN (Li & Liu 2016) and TTQ (Zhu et al. 2017), as `compress.ternary.method`.

TWN: threshold `delta = 0.7 * mean |W|` per layer, weights above it in magnitude become `+-alpha`
with `alpha` the mean |W| of those weights (one scale per layer), the rest 0; the gradient goes
straight through to the latent weights. TTQ: threshold `t * max |W|`, and two learned scales per
layer, `w_p` for the positive and `w_n` for the negative weights (initialized to the mean magnitude
of each side); the latent weights get the gradient scaled by `w_p` / `1` / `w_n` in the positive /
zero / negative region, `w_p` the sum of the positive region's gradients, `w_n` minus that of the
negative one. First and last layers stay at full precision by default. Each ternary layer ships as
two bits per weight plus its scales (callbacks/formats/dcz.py).
"""

from __future__ import annotations

import torch
from torch import nn
from typing_extensions import override

from callbacks.parametrized import HiddenLayerStep, LatentWeight

__all__ = ["METHODS", "TTQFunction", "TernarySTE", "TernaryWeight", "TernaryWeights", "twn_scale", "twn_threshold"]

METHODS = ("twn", "ttq")


def twn_threshold(weight: torch.Tensor) -> torch.Tensor:
    """TWN's delta = 0.7 * mean |W|."""
    return 0.7 * weight.abs().mean()


def twn_scale(weight: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """TWN's alpha: mean |W| over the weights above the threshold."""
    above = weight.abs() > delta
    return weight.abs()[above].mean() if bool(above.any()) else weight.abs().mean()


class TernarySTE(torch.autograd.Function):
    """sign(w) where |w| > delta, else 0; backward: the gradient unchanged (straight through)."""

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, weight: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        return torch.where(weight > delta, 1.0, torch.where(weight < -delta, -1.0, 0.0)).to(weight.dtype)

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad, None


class TTQFunction(torch.autograd.Function):
    """TTQ's forward `w_p` / 0 / `-w_n` and its gradients to the latent weights and both scales."""

    @staticmethod
    def forward(
        ctx: torch.autograd.function.FunctionCtx,
        weight: torch.Tensor,
        w_p: torch.Tensor,
        w_n: torch.Tensor,
        delta: torch.Tensor,
    ) -> torch.Tensor:
        positive, negative = weight > delta, weight < -delta
        ctx.save_for_backward(positive, negative, w_p, w_n)
        zero = torch.zeros((), dtype=weight.dtype, device=weight.device)
        return torch.where(positive, w_p, torch.where(negative, -w_n, zero))

    @staticmethod
    def backward(
        ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, None]:
        positive, negative, w_p, w_n = ctx.saved_tensors
        latent = torch.where(positive, w_p * grad, torch.where(negative, w_n * grad, grad))
        return latent, grad[positive].sum().reshape(w_p.shape), -grad[negative].sum().reshape(w_n.shape), None


class TernaryWeight(LatentWeight):
    """`latent -> {-a, 0, +b}`: TWN (a = b = alpha, computed) or TTQ (learned w_n, w_p)."""

    def __init__(self, owner: str, shape: torch.Size, method: str, threshold: float) -> None:
        super().__init__(owner, shape)
        self.method, self.threshold = method, threshold
        # TTQ's learned scales (parameters from the start, so the optimizer holds them in every phase)
        self.w_p = nn.Parameter(torch.ones(()))
        self.w_n = nn.Parameter(torch.ones(()))

    def delta(self, latent: torch.Tensor) -> torch.Tensor:
        if self.method == "twn":
            return twn_threshold(latent.detach())
        return self.threshold * latent.detach().abs().max()

    @override
    def compute(self, latent: torch.Tensor) -> torch.Tensor:
        delta = self.delta(latent)
        if self.method == "twn":
            return TernarySTE.apply(latent, delta) * twn_scale(latent.detach(), delta)
        return TTQFunction.apply(latent, self.w_p, self.w_n, delta)

    @override
    @torch.no_grad()
    def activate(self, latent: torch.Tensor, weight: torch.Tensor) -> None:
        delta = self.delta(latent)
        positive, negative = latent[latent > delta], latent[latent < -delta]
        self.w_p.fill_(float(positive.mean()) if positive.numel() else float(delta))
        self.w_n.fill_(float(-negative.mean()) if negative.numel() else float(delta))
        super().activate(latent, weight)


class TernaryWeights(HiddenLayerStep):
    """TWN / TTQ weights on every Linear / Conv2d but (by default) the first and last."""

    step = "ternary"
    order_in_stage = 0
    order_reason = "ternarize the weights first; weight sharing then clusters the layers left at full precision"
    excludes = {**HiddenLayerStep.excludes, "binary": "both set the hidden layers' weights to a few values"}

    def __init__(
        self, method: str = "ttq", start_epoch: int = 0, threshold: float = 0.05, skip_first_last: bool = True
    ) -> None:
        if method not in METHODS:
            raise ValueError(f"compress.ternary.method={method!r} must be 'twn' or 'ttq'")
        if not 0 < threshold < 1:
            raise ValueError(f"compress.ternary.threshold={threshold} must be in (0, 1), e.g. 0.05 (TTQ's t)")
        super().__init__(start_epoch, skip_first_last)
        self.method, self.threshold = method, threshold

    @override
    def make(self, module: nn.Module, latent: torch.Tensor) -> LatentWeight:
        return TernaryWeight(self.step, latent.shape, self.method, self.threshold)
