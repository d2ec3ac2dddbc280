"""DCGAN (Radford et al. 2015): strided transposed convolutions with BatchNorm and ReLU up to a tanh
image, strided convolutions with LeakyReLU (BatchNorm after the first) down to one logit.
Conditional: the label embedding is appended to z, and given to the discriminator as an extra
input channel."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from modules.nets.gan_pair import GanPair, check_gan_sizes, with_label

__all__ = ["DCDiscriminator", "DCGan", "DCGenerator"]


class DCGenerator(nn.Module):
    """z -> Linear to channels[0] x H/2^n x W/2^n -> n stride-2 transposed convs (BN, ReLU) -> tanh."""

    def __init__(
        self,
        output_shape: Sequence[int],
        latent_dim: int,
        channels: Sequence[int],
        num_classes: int = 0,
        embed_dim: int = 0,
    ) -> None:
        super().__init__()
        self.latent_dim = latent_dim
        scale = 2 ** len(channels)
        self.start = (channels[0], output_shape[1] // scale, output_shape[2] // scale)
        self.embedding = nn.Embedding(num_classes, embed_dim) if embed_dim else None
        self.project = nn.Sequential(
            nn.Linear(latent_dim + embed_dim, channels[0] * self.start[1] * self.start[2], bias=False),
            nn.BatchNorm1d(channels[0] * self.start[1] * self.start[2]),
            nn.ReLU(),
        )
        blocks: list[nn.Module] = []
        for c_in, c_out in zip(channels, channels[1:]):
            blocks += [nn.ConvTranspose2d(c_in, c_out, 4, 2, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU()]
        blocks += [nn.ConvTranspose2d(channels[-1], output_shape[0], 4, 2, 1), nn.Tanh()]
        self.body = nn.Sequential(*blocks)

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        return self.body(self.project(with_label(z, self.embedding, labels)).view(-1, *self.start))


class DCDiscriminator(nn.Module):
    """image (+ a label channel) -> n stride-2 convs with LeakyReLU (BN after the first) -> Linear logit."""

    def __init__(self, input_shape: Sequence[int], channels: Sequence[int], num_classes: int = 0) -> None:
        super().__init__()
        in_channels, height, width = input_shape
        self.label_map = nn.Embedding(num_classes, height * width) if num_classes else None
        blocks: list[nn.Module] = []
        width_in = in_channels + (1 if num_classes else 0)
        for i, c_out in enumerate(channels):
            blocks.append(nn.Conv2d(width_in, c_out, 4, 2, 1, bias=i == 0))
            if i:
                blocks.append(nn.BatchNorm2d(c_out))
            blocks.append(nn.LeakyReLU(0.2))
            width_in = c_out
        scale = 2 ** len(channels)
        self.body = nn.Sequential(*blocks, nn.Flatten(), nn.Linear(width_in * (height // scale) * (width // scale), 1))

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        if self.label_map is not None:
            if labels is None:
                raise ValueError("this GAN is conditional (task.conditional=true): pass the class labels too")
            x = torch.cat([x, self.label_map(labels).view(-1, 1, *x.shape[2:])], dim=1)
        return self.body(x).squeeze(1)


class DCGan(GanPair):
    """The pair, sized from the data; the image sides must be divisible by 2^len(channels)."""

    def __init__(
        self,
        input_shape: Sequence[int],
        num_classes: int,
        latent_dim: int = 32,
        conditional: bool = False,
        generator_channels: Sequence[int] = (128, 64),
        discriminator_channels: Sequence[int] = (64, 128),
    ) -> None:
        check_gan_sizes(latent_dim, conditional, num_classes)
        for key, channels in (
            ("generator_channels", generator_channels),
            ("discriminator_channels", discriminator_channels),
        ):
            if not channels or any(c <= 0 for c in channels):
                raise ValueError(f"model.{key}={list(channels)} must hold positive channel counts, e.g. [128,64]")
            scale = 2 ** len(channels)
            if input_shape[1] % scale or input_shape[2] % scale:
                raise ValueError(
                    f"model.{key}={list(channels)} halves the image {len(channels)} times, but the "
                    f"data's {input_shape[1]}x{input_shape[2]} images are not divisible by {scale}: "
                    f"use fewer stages or set data.image_size"
                )
        classes = num_classes if conditional else 0
        super().__init__(
            DCGenerator(input_shape, latent_dim, generator_channels, classes, classes),
            DCDiscriminator(input_shape, discriminator_channels, classes),
            input_shape,
            num_classes,
            latent_dim,
            conditional,
        )
