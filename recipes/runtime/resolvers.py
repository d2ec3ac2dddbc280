"""The OmegaConf resolvers the YAML under conf/ uses."""

from __future__ import annotations

import os
from typing import Any

from omegaconf import OmegaConf

from recipes.runtime.process_env import process_rank, run_id

__all__ = ["checkpoint_filename", "register_resolvers"]


def _rank_zero_path(path: str) -> str:
    return path if process_rank() == 0 else os.devnull


def _rank_zero_only(value: Any) -> Any:
    return value if process_rank() == 0 else None


def register_resolvers() -> None:
    """Resolvers used by conf/: ${rank_zero_path:P} is P on rank 0 and the null device elsewhere;
    ${rank_zero_only:V} is V on rank 0 and null elsewhere; ${run_id:} names the launch (see run_id),
    cached so that every use in one config, and every job of a sweep (Hydra copies the cache), agrees;
    ${checkpoint_filename:M} is the best checkpoint's file name template for the monitored metric M;
    ${if_else:C,A,B} is A when C is true, else B (recipe=gan's discriminator LR, by task.conditional)."""
    if not OmegaConf.has_resolver("rank_zero_path"):
        OmegaConf.register_new_resolver("rank_zero_path", _rank_zero_path)
    if not OmegaConf.has_resolver("rank_zero_only"):
        OmegaConf.register_new_resolver("rank_zero_only", _rank_zero_only)
    if not OmegaConf.has_resolver("run_id"):
        OmegaConf.register_new_resolver("run_id", run_id, use_cache=True)
    if not OmegaConf.has_resolver("checkpoint_filename"):
        OmegaConf.register_new_resolver("checkpoint_filename", checkpoint_filename)
    if not OmegaConf.has_resolver("if_else"):
        OmegaConf.register_new_resolver("if_else", lambda condition, then, otherwise: then if condition else otherwise)


def checkpoint_filename(monitor: str) -> str:
    """ModelCheckpoint's file name template for a monitored metric: `val/acc` gives
    `epoch{epoch:03d}-acc{val/acc:.4f}` (files such as epoch010-acc0.9722.ckpt, which users' scripts
    read), `val/fd` gives `epoch{epoch:03d}-fd{val/fd:.4f}`."""
    return f"epoch{{epoch:03d}}-{monitor.rpartition('/')[2]}{{{monitor}:.4f}}"
