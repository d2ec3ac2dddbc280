"""A Hydra callback that refuses, in one line and before Hydra writes `.hydra/` into the run dir, a
resume (`ckpt_path=last` or `ckpt_path=PATH`) whose checkpoint another recipe or another compression
plan wrote: its training state (pruning masks, quantizer scales, ...) does not fit the module this run
would build, and Lightning would fail with a traceback only after the run dir's config was replaced.
The checkpoint is read with weights_only=True and memory-mapped: only its `recipe` record is looked at."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from omegaconf import DictConfig
from typing_extensions import override

from recipes.errors import RecipeError
from recipes.runtime.run_lock import refuse

__all__ = ["ResumeFits", "check_resume_fits"]


def _steps(node: Any) -> list[str]:
    return [str(name) for name in (node or {})]


def check_resume_fits(config: DictConfig, run_dir: Path) -> None:
    """RecipeError when the checkpoint `config.ckpt_path` names (in `run_dir` for `last`) is missing,
    unreadable, or was written by another recipe or compression plan than `config` composes."""
    from recipes.checkpointing.format import KEY, load_checkpoint, resolve_ckpt_path

    value = str(config.ckpt_path)
    path = resolve_ckpt_path(value, run_dir)
    entry = load_checkpoint(str(path), mmap=True)[KEY]
    shown = f"ckpt_path={value}" + (f" ({path})" if value == "last" else "")
    recipe = config.hydra.runtime.choices.get("recipe")
    theirs = (entry.get("choices") or {}).get("recipe")
    if theirs and theirs != recipe:
        raise RecipeError(
            f"{shown} was written by recipe={theirs}, which does not fit recipe={recipe}; resume it with "
            f"recipe={theirs}, or train recipe={recipe} in a new hydra.run.dir without ckpt_path"
        )
    steps, saved = _steps(config.get("compress")), _steps((entry.get("config") or {}).get("compress"))
    if steps != saved:
        raise RecipeError(
            f"{shown} was written with compress=[{','.join(saved)}], which does not fit "
            f"compress=[{','.join(steps)}]; resume it with compress=[{','.join(saved)}], or train in a new "
            f"hydra.run.dir without ckpt_path"
        )


class ResumeFits(Callback):
    """Runs at the start of a training run (conf/hydra/default.yaml, before the run-dir lock makes or
    locks anything), on every rank: it only reads, so Lightning's DDP children (which re-run the script
    with rank 0's resume) pass as rank 0 did, and under torchrun or srun every rank refuses alike instead
    of waiting for a rank 0 that is gone."""

    @override
    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        if not config.get("ckpt_path") or "recipe" not in config.hydra.runtime.choices:
            return
        HydraConfig.instance().set_config(config)  # what run_job does first: ${hydra:...} resolves
        try:
            check_resume_fits(config, Path(str(config.hydra.run.dir)))
        except RecipeError as err:
            if os.environ.get("HYDRA_FULL_ERROR") == "1":
                raise
            refuse(str(err))
