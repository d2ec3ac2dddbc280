"""What both GAN net families share: the generator/discriminator pair the `model` node builds, and
the checks of the sizes they are built from."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["GanPair", "check_gan_sizes", "with_label"]


def check_gan_sizes(latent_dim: int, conditional: bool, num_classes: int) -> None:
    """The task keys the nets are sized by (the model node interpolates them from `task`)."""
    if latent_dim < 1:
        raise ValueError(
            f"task.latent_dim={latent_dim} must be >= 1 (the size of the generator's noise input), e.g. 32"
        )
    if conditional and num_classes < 2:
        raise ValueError(
            f"task.conditional=true needs labelled data with at least 2 classes, but the data gives "
            f"{num_classes}; set task.conditional=false"
        )


class GanPair(nn.Module):
    """The generator (the net that ships) and the discriminator, built together from the data's
    input shape and class count. `conditional`: both nets also take the class label."""

    def __init__(
        self,
        generator: nn.Module,
        discriminator: nn.Module,
        input_shape: Sequence[int],
        num_classes: int,
        latent_dim: int,
        conditional: bool,
    ) -> None:
        super().__init__()
        self.generator, self.discriminator = generator, discriminator
        self.input_shape, self.num_classes = tuple(input_shape), num_classes
        self.latent_dim, self.conditional = latent_dim, conditional


def with_label(x: torch.Tensor, embedding: nn.Embedding | None, labels: torch.Tensor | None) -> torch.Tensor:
    """`x` (N x F) with the labels' embedding appended as features (Mirza & Osindero 2014)."""
    if embedding is None:
        return x
    if labels is None:
        raise ValueError("this GAN is conditional (task.conditional=true): pass the class labels too")
    return torch.cat([x, embedding(labels)], dim=1)
