"""The torchvision v2 pipeline every data module shares: float [0, 1] -> size -> channels -> domain
shift -> (training) augmentation -> normalization."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torchvision.transforms import v2

from recipes.data.shift import domain_shift

__all__ = ["compose", "geometry_and_domain", "normalization", "to_float_image"]


def compose(steps: Sequence[Callable]) -> Callable:
    """v2.Compose that also accepts no steps (identity)."""
    return v2.Compose(list(steps)) if steps else v2.Identity()


def to_float_image() -> v2.Compose:
    """PIL image or uint8 tensor -> float32 tensor image in [0, 1]."""
    return v2.Compose([v2.ToImage(), v2.ToDtype(torch.float32, scale=True)])


def geometry_and_domain(
    native_channels: int, channels: int, image_size: int | None, shift: dict[str, Any] | None
) -> list[Callable]:
    """Resize, channel conversion and domain shift: deterministic, so in-memory data applies them once."""
    steps: list[Callable] = []
    if image_size is not None:
        steps += [v2.Resize(image_size, antialias=True), v2.CenterCrop(image_size)]
    if channels != native_channels:
        steps.append(v2.RGB() if channels == 3 else v2.Grayscale(num_output_channels=1))
    if shift:
        try:
            steps.append(domain_shift(**shift))
        except TypeError as err:
            raise ValueError(
                f"data.shift={dict(shift)} has an unknown key ({err}); keys: rotation, noise, "
                "invert, contrast, brightness, saturation, hue"
            ) from None
    return steps


def normalization(normalize: dict[str, Sequence[float]] | None, channels: int) -> list[Callable]:
    """v2.Normalize with mean/std broadcast to the channel count; [] when normalize is null."""
    if not normalize:
        return []
    mean, std = list(normalize["mean"]), list(normalize["std"])
    if channels == 1 and len(mean) == len(std) > 1:  # RGB statistics for grayscale-converted images
        mean, std = [sum(mean) / len(mean)], [sum(std) / len(std)]
    if len(mean) != len(std) or len(mean) not in (1, channels):
        raise ValueError(f"data.normalize mean={mean} std={std} must both have 1 or {channels} (data.channels) values")
    if any(s <= 0 for s in std):
        raise ValueError(f"data.normalize.std={std} must be positive")
    return [v2.Normalize(mean=mean * (channels // len(mean)), std=std * (channels // len(std)))]
