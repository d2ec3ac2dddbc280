"""Start-up checks of the Trainer's own knobs that Lightning accepts and then fails on mid-run
(`accumulate_grad_batches=0`: a ZeroDivisionError at the first step) or turns into a meaningless run
(a negative clip value flips the gradients' sign; `log_every_n_steps=0` never logs train/loss). The
training budget (`max_epochs`, `max_steps`, `limit_train_batches`) is recipes.assembly.startup_checks'
check_budget. A value of the wrong type is left to the signature check, which names it."""

from __future__ import annotations

import math
from typing import Any

from omegaconf import DictConfig

from recipes.errors import RecipeError

__all__ = ["check_trainer_values", "number"]


def number(value: Any) -> float | None:
    """A numeric config value as a float; None for null, a bool or any other type."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def check_trainer_values(cfg: DictConfig) -> None:
    trainer = cfg.trainer
    accumulate = number(trainer.get("accumulate_grad_batches"))
    if accumulate is not None and accumulate < 1:
        raise RecipeError(
            f"trainer.accumulate_grad_batches={trainer.accumulate_grad_batches} must be a positive count of "
            "batches whose gradients are summed before each optimizer step, e.g. "
            "trainer.accumulate_grad_batches=1 (a step every batch)"
        )
    clip = number(trainer.get("gradient_clip_val"))
    if clip is not None and not (math.isfinite(clip) and clip >= 0):
        raise RecipeError(
            f"trainer.gradient_clip_val={trainer.gradient_clip_val} must be a finite positive gradient norm to "
            "clip to, e.g. trainer.gradient_clip_val=1.0, or null (no clipping)"
        )
    every = number(trainer.get("log_every_n_steps"))
    if every is not None and every < 1:
        raise RecipeError(
            f"trainer.log_every_n_steps={trainer.log_every_n_steps} must be a positive count of steps between "
            "train/loss logs (0 never logs it), e.g. trainer.log_every_n_steps=50"
        )
