"""Domain shift: a fixed, deterministic change of the input distribution that turns any data set into
a "new domain" for adaptation recipes (rotated, noisy, inverted, low-contrast or recoloured images)."""

from __future__ import annotations

from torchvision.transforms import v2

__all__ = ["domain_shift"]


def domain_shift(
    rotation: float = 0.0,
    noise: float = 0.0,
    invert: bool = False,
    contrast: float = 1.0,
    brightness: float = 1.0,
    saturation: float = 1.0,
    hue: float = 0.0,
) -> v2.Compose:
    """Transforms for float images in [0, 1], applied in the order of the arguments.

    rotation: degrees, counter-clockwise, the same for every image. noise: std of additive Gaussian
    noise (clipped to [0, 1]). invert: 1 - x. contrast/brightness/saturation: factors (1 = unchanged).
    hue: shift in [-0.5, 0.5] (RGB only).
    """
    if noise < 0:
        raise ValueError(f"data.shift.noise={noise} must be >= 0 (the std of the added Gaussian noise)")
    steps: list[v2.Transform] = []
    if rotation:
        steps.append(v2.RandomRotation(degrees=(rotation, rotation)))
    if (contrast, brightness, saturation, hue) != (1.0, 1.0, 1.0, 0.0):
        steps.append(
            v2.ColorJitter(
                brightness=(brightness, brightness),
                contrast=(contrast, contrast),
                saturation=(saturation, saturation),
                hue=(hue, hue) if hue else None,
            )
        )
    if invert:
        steps.append(v2.RandomInvert(p=1.0))
    if noise:
        steps.append(v2.GaussianNoise(sigma=noise, clip=True))
    return v2.Compose(steps)
