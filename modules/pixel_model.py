"""The model an attack sees: a net behind its data's normalization, taking images in [0, 1], so that
an attack's `eps` is in pixel units whatever `data.normalize` says."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn

__all__ = ["PixelModel", "PixelNormalized", "normalization_of"]


@runtime_checkable
class PixelNormalized(Protocol):
    """A data module that says how its images were normalized (recipes.data's modules do)."""

    def pixel_normalization(self) -> tuple[list[float], list[float]] | None:
        """Per-channel (mean, std) of the normalization applied after [0, 1], or None for none."""


def normalization_of(datamodule: Any) -> tuple[list[float], list[float]] | None:
    """The (mean, std) a data module normalizes its images with (None: none)."""
    if not isinstance(datamodule, PixelNormalized):
        raise ValueError(
            f"{type(datamodule).__name__} does not say how its images are normalized "
            "(pixel_normalization), so eps cannot be measured in pixel units"
        )
    return datamodule.pixel_normalization()


class PixelModel(nn.Module):
    """`net` seen from pixel space: takes images in [0, 1] and normalizes them as the data module does
    (`mean` / `std` per channel, or none) before the net. The attacks only ever see this model."""

    def __init__(self, net: nn.Module, mean: Sequence[float] | None = None, std: Sequence[float] | None = None) -> None:
        super().__init__()
        self.net = net
        shape = (1, -1, 1, 1)
        mean_t = torch.tensor(list(mean) if mean is not None else [0.0]).view(shape)
        std_t = torch.tensor(list(std) if std is not None else [1.0]).view(shape)
        self.register_buffer("mean", mean_t, persistent=False)
        self.register_buffer("std", std_t, persistent=False)

    @classmethod
    def of(cls, net: nn.Module, datamodule: Any) -> PixelModel:
        """`net` in the pixel space of `datamodule`'s images."""
        return cls(net, *(normalization_of(datamodule) or (None, None)))

    def to_pixels(self, x: torch.Tensor) -> torch.Tensor:
        """Normalized images (as the data loader gives them) back to [0, 1]."""
        return (x * self.std.to(x) + self.mean.to(x)).clamp(0, 1)

    def to_inputs(self, pixels: torch.Tensor) -> torch.Tensor:
        """Images in [0, 1] as the net expects them."""
        return (pixels - self.mean.to(pixels)) / self.std.to(pixels)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.net(self.to_inputs(pixels))
