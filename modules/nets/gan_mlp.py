"""The fully connected GAN of Goodfellow et al. 2014 (LeakyReLU in place of maxout units), optionally
class-conditional (Mirza & Osindero 2014): a label embedding is appended to each net's input."""

from __future__ import annotations

from collections.abc import Sequence
from math import prod

import torch
from torch import nn

from modules.nets.gan_pair import GanPair, check_gan_sizes, with_label

__all__ = ["MLPDiscriminator", "MLPGan", "MLPGenerator"]


def _layers(width: int, hidden: Sequence[int], out: int) -> list[nn.Module]:
    layers: list[nn.Module] = []
    for size in hidden:
        layers += [nn.Linear(width, size), nn.LeakyReLU(0.2)]
        width = size
    return [*layers, nn.Linear(width, out)]


class MLPGenerator(nn.Module):
    """z (and a label) -> hidden Linear+LeakyReLU layers -> Linear -> tanh, shaped as an image in [-1, 1]."""

    def __init__(
        self,
        output_shape: Sequence[int],
        latent_dim: int,
        hidden: Sequence[int],
        num_classes: int = 0,
        embed_dim: int = 0,
    ) -> None:
        super().__init__()
        self.output_shape, self.latent_dim = tuple(output_shape), latent_dim
        self.embedding = nn.Embedding(num_classes, embed_dim) if embed_dim else None
        self.body = nn.Sequential(*_layers(latent_dim + embed_dim, hidden, prod(output_shape)), nn.Tanh())

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        return self.body(with_label(z, self.embedding, labels)).view(-1, *self.output_shape)


class MLPDiscriminator(nn.Module):
    """image (and a label) -> flattened -> hidden Linear+LeakyReLU layers -> one logit (real vs generated)."""

    def __init__(
        self, input_shape: Sequence[int], hidden: Sequence[int], num_classes: int = 0, embed_dim: int = 0
    ) -> None:
        super().__init__()
        self.embedding = nn.Embedding(num_classes, embed_dim) if embed_dim else None
        self.body = nn.Sequential(*_layers(prod(input_shape) + embed_dim, hidden, 1))

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        return self.body(with_label(x.flatten(1), self.embedding, labels)).squeeze(1)


class MLPGan(GanPair):
    """The pair, sized from the data: the generator draws images of `input_shape`."""

    def __init__(
        self,
        input_shape: Sequence[int],
        num_classes: int,
        latent_dim: int = 32,
        conditional: bool = False,
        generator_hidden: Sequence[int] = (128, 256),
        discriminator_hidden: Sequence[int] = (256, 128),
    ) -> None:
        check_gan_sizes(latent_dim, conditional, num_classes)
        if any(h <= 0 for h in [*generator_hidden, *discriminator_hidden]):
            raise ValueError(
                f"model.generator_hidden={list(generator_hidden)} and model.discriminator_hidden="
                f"{list(discriminator_hidden)} must hold positive layer widths, e.g. [128,256]"
            )
        embed = num_classes if conditional else 0
        super().__init__(
            MLPGenerator(input_shape, latent_dim, generator_hidden, num_classes, embed),
            MLPDiscriminator(input_shape, discriminator_hidden, num_classes, embed),
            input_shape,
            num_classes,
            latent_dim,
            conditional,
        )
