"""Paths read back from a resumed checkpoint are data from whoever wrote the file, and Lightning acts
on them: `ModelCheckpoint` removes its previous best or last file by the path its saved state names,
through the filesystem that the path's scheme picks, and skips its "inside the checkpoint dir" check
for a path with a scheme (`local:///home/me` is removed recursively). So before any callback loads its
state, every path in a `ModelCheckpoint` state must be a plain local checkpoint file directly inside
that callback's own `checkpoints/` folder (no scheme, no `..` or symlink leading out); any other is
dropped with a one-line warning, and the checkpoint that it would have named is chosen afresh."""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from typing_extensions import override

__all__ = ["ResumePathGuard", "foreign_paths", "is_checkpoint_in", "log"]

log = logging.getLogger(__name__)

_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")  # file:, local://, s3://, memory:: chains
# The path entries of ModelCheckpoint.state_dict(), and the score that goes with the best one.
_PATHS = ("best_model_path", "kth_best_model_path", "last_model_path")


def is_checkpoint_in(path: Any, folder: str | os.PathLike[str]) -> bool:
    """True for a plain local path whose real location (every `..` and symlink resolved) is a file,
    or nothing yet, directly inside `folder`'s real location; never for a folder."""
    if not isinstance(path, str) or not path or _SCHEME.match(path):
        return False
    real = Path(os.path.realpath(path))
    return real.parent == Path(os.path.realpath(folder)) and not real.is_dir()


def foreign_paths(state: dict[str, Any], folder: str | os.PathLike[str]) -> list[str]:
    """Drop, in place, every path in a ModelCheckpoint `state` that is not a checkpoint in `folder`;
    return the dropped ones. A dropped best path takes its score with it, so the next save is the new best."""
    dropped = []
    for key in _PATHS:
        value = state.get(key)
        if value and not is_checkpoint_in(value, folder):
            dropped.append(str(value))
            state[key] = ""
            if key == "best_model_path":
                state["best_model_score"] = None
    best_k = state.get("best_k_models")
    if isinstance(best_k, dict):
        dropped += [str(p) for p in best_k if not is_checkpoint_in(p, folder)]
        state["best_k_models"] = {p: s for p, s in best_k.items() if is_checkpoint_in(p, folder)}
    elif best_k is not None:
        dropped.append(repr(best_k)[:80])
        state["best_k_models"] = {}
    return dropped


class ResumePathGuard(Callback):
    """Runs in `on_load_checkpoint`, which Lightning calls for every callback before any callback's
    `load_state_dict`, so no ModelCheckpoint ever sees a path that fails `is_checkpoint_in`."""

    @override
    def on_load_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        states = checkpoint.get("callbacks") or {}
        for callback in trainer.checkpoint_callbacks:
            if not isinstance(callback, ModelCheckpoint) or callback.dirpath is None:
                continue
            # Lightning also looks under a pre-1.5 key, the callback's class, which a checkpoint loaded
            # with weights_only=True (as every fit here loads one) cannot hold.
            state = states.get(callback.state_key)
            if not isinstance(state, dict):
                continue
            dropped = foreign_paths(state, callback.dirpath)
            if dropped:
                log.warning(
                    f"the resumed checkpoint {trainer.ckpt_path} names {dropped[0]!r} as a checkpoint of "
                    f"{callback.dirpath}, which it is not: ignored (a checkpoint's paths are never acted on "
                    f"outside its own checkpoints/ folder)"
                )
