"""Perturbations of images in [0, 1] within an eps ball: FGSM (Goodfellow et al. 2015), PGD under
L-inf and L2 with random start and restarts (Madry et al. 2018), uniform random points of the ball,
and the checks of their eps and step counts.

FGSM and PGD are written here rather than called from torchattacks because adversarial training
runs them inside training steps: they take gradients with respect to the input only (no parameter
gradient is touched, so DDP and the optimizer never see them), leave the model's train/eval mode as
it is, and work under Lightning's inference mode (`gradients_on`). tests/modules/test_attacks.py checks them
against torchattacks on the same model and inputs.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "NORMS",
    "ascent_step",
    "check_eps",
    "check_steps",
    "fgsm",
    "gradients_on",
    "input_gradient",
    "pgd",
    "project",
    "random_in_ball",
    "seeded",
]

NORMS = ("linf", "l2")


@contextlib.contextmanager
def gradients_on() -> Iterator[None]:
    """Autograd on, even inside Lightning's validation / test loops (which run under
    `torch.inference_mode()` or `torch.no_grad()`): an attack needs the gradient of the loss with
    respect to its input. Tensors made inside inference mode must be cloned in here before use."""
    with torch.inference_mode(False), torch.enable_grad():
        yield


@contextlib.contextmanager
def seeded(seed: int, device: torch.device) -> Iterator[None]:
    """Random starts drawn from `seed`, the global RNG streams untouched: an evaluation (a batch's
    PGD) gives the same figures in recipes.train, recipes.evaluate and recipes.attack."""
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        yield


def check_eps(eps: float, key: str = "attack.eps") -> None:
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not 0 <= eps <= 1:
        raise ValueError(
            f"{key}={eps} must be in [0, 1] (pixel units of images in [0, 1], before normalization), e.g. {key}=0.1"
        )


def check_steps(steps: int, key: str) -> None:
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"{key}={steps} must be an integer >= 1, e.g. {key}=10")


def input_gradient(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """d CE(model(x), y) / dx, summed over the batch (so each sample's gradient is its own), without
    touching any parameter's .grad."""
    x = x.detach().clone().requires_grad_(True)
    loss = F.cross_entropy(model(x), y.clone(), reduction="sum")  # a clone: y may be an inference tensor
    return torch.autograd.grad(loss, x)[0]


def fgsm(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float) -> torch.Tensor:
    """One signed-gradient step of size eps (Goodfellow et al. 2015), clipped to [0, 1]."""
    with gradients_on():
        return (x + eps * input_gradient(model, x, y).sign()).clamp(0, 1).detach()


def project(delta: torch.Tensor, eps: float, norm: str) -> torch.Tensor:
    """`delta` projected onto the eps ball of `norm` (per sample)."""
    if norm == "linf":
        return delta.clamp(-eps, eps)
    norms = delta.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *[1] * (delta.dim() - 1))
    return delta * (eps / norms).clamp(max=1.0)


def random_in_ball(x: torch.Tensor, eps: float, norm: str) -> torch.Tensor:
    """A uniform random point of the eps ball around 0 (L-inf: a uniform cube; L2: uniform in the ball)."""
    if norm == "linf":
        return torch.empty_like(x).uniform_(-eps, eps)
    direction = torch.randn_like(x)
    direction = direction / direction.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *[1] * (x.dim() - 1))
    radius = torch.rand(x.shape[0], device=x.device, dtype=x.dtype) ** (1.0 / x[0].numel())
    return direction * (eps * radius).view(-1, *[1] * (x.dim() - 1))


def ascent_step(grad: torch.Tensor, step_size: float, norm: str) -> torch.Tensor:
    """The steepest-ascent step of `norm`: the gradient's sign (L-inf) or its direction (L2)."""
    if norm == "linf":
        return step_size * grad.sign()
    norms = grad.flatten(1).norm(dim=1).view(-1, *[1] * (grad.dim() - 1)) + 1e-10
    return step_size * grad / norms


def pgd(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    steps: int,
    step_size: float,
    norm: str = "linf",
    random_start: bool = True,
    restarts: int = 1,
) -> torch.Tensor:
    """Projected gradient ascent on the cross-entropy inside the eps ball of `norm` and [0, 1]
    (Madry et al. 2018). With several restarts, each sample keeps the first restart that fools the
    model (else the last one)."""
    with gradients_on():
        x = x.detach().clone()
        best = x.clone()
        fooled = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
        for _ in range(restarts):
            delta = random_in_ball(x, eps, norm) if random_start else torch.zeros_like(x)
            adv = (x + delta).clamp(0, 1)
            for _ in range(steps):
                adv = adv + ascent_step(input_gradient(model, adv, y), step_size, norm)
                adv = (x + project(adv - x, eps, norm)).clamp(0, 1).detach()
            if restarts == 1:
                return adv
            with torch.no_grad():
                now = model(adv).argmax(dim=1) != y
            take = ~fooled
            best[take] = adv[take]
            fooled |= now
        return best
