"""The GAN objectives, on the discriminator's logits (sigmoid(logit) = D(x), the probability 'real').

- minimax (Goodfellow et al. 2014): D maximizes log D(x) + log(1 - D(G(z))); G minimizes log(1 - D(G(z))).
- non_saturating (same paper, Sec. 3): G maximizes log D(G(z)) instead: strong gradients early on.
- hinge (Lim & Ye 2017; Miyato et al. 2018): D: relu(1 - D(x)) + relu(1 + D(G(z))); G: -D(G(z)).

One-sided label smoothing (Salimans et al. 2016) sets the real target of the BCE losses to 1 - s.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["LOSSES", "discriminator_loss", "generator_loss"]

LOSSES = ("non_saturating", "minimax", "hinge")


def discriminator_loss(
    real_logits: torch.Tensor, fake_logits: torch.Tensor, kind: str, label_smoothing: float = 0.0
) -> torch.Tensor:
    if kind == "hinge":
        return F.relu(1 - real_logits).mean() + F.relu(1 + fake_logits).mean()
    real = F.binary_cross_entropy_with_logits(real_logits, torch.full_like(real_logits, 1 - label_smoothing))
    return real + F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits))


def generator_loss(fake_logits: torch.Tensor, kind: str) -> torch.Tensor:
    if kind == "hinge":
        return -fake_logits.mean()
    if kind == "minimax":  # log(1 - sigmoid(l)) = -softplus(l)
        return -F.softplus(fake_logits).mean()
    return F.binary_cross_entropy_with_logits(fake_logits, torch.ones_like(fake_logits))
