"""Sample grids of a generator: PNG files in the run dir and TensorBoard images."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import torch
from lightning.pytorch.loggers import Logger, TensorBoardLogger
from torchvision.utils import make_grid, save_image

__all__ = ["publish_grid", "sample_grid", "save_grid"]


def sample_grid(images: torch.Tensor, per_row: int) -> torch.Tensor:
    """Generated images in [-1, 1] tiled `per_row` to a row, as one [0, 1] image (C x H x W)."""
    return make_grid(images.detach().float().cpu(), nrow=per_row, padding=1, normalize=True, value_range=(-1, 1))


def save_grid(grid: torch.Tensor, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    save_image(grid, path)


def publish_grid(grid: torch.Tensor, path: Path, loggers: Iterable[Logger], step: int) -> None:
    """Save `grid` as PNG at `path` and hand it to each TensorBoard logger among `loggers`."""
    save_grid(grid, path)
    for logger in loggers:
        if isinstance(logger, TensorBoardLogger):
            logger.experiment.add_image("samples", grid, global_step=step)
