"""A Hydra callback that refuses, in one line and before Hydra creates or writes anything, a run dir
(or sweep dir) that cannot be written: below a regular file, or in a folder without write access. It
runs first, so it also records what the run will create there (recipes/created_dirs.py)."""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from omegaconf import DictConfig
from typing_extensions import override

from recipes.created_dirs import note
from recipes.errors import RecipeError


def check_writable(folder: Path, key: str) -> None:
    """Probe the folder, or the nearest ancestor that exists (creating nothing that Hydra would not)."""
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise RecipeError(f"{key}={folder} cannot be created: {existing} is a file, not a folder; choose another {key}")
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as err:
        raise RecipeError(
            f"{key}={folder} cannot be written ({err.strerror} in {existing}); choose a writable {key}"
        ) from None


class WritableRunDir(Callback):
    """Runs at the start of a run or a multirun, when Hydra has composed the config but not yet made
    the run dir, so the refusal leaves nothing behind."""

    @staticmethod
    def _check(config: DictConfig, key: str) -> None:
        from recipes.cli import EXIT_BAD_INPUT, process_rank

        if process_rank() != 0:  # only rank 0 writes in the run dir (and probing it is a write)
            return
        HydraConfig.instance().set_config(config)  # what run_job does first: ${hydra:...} resolves
        folder = Path(str(config.hydra[key.split(".")[1]].dir))
        try:
            check_writable(folder, key)
        except RecipeError as err:
            if os.environ.get("HYDRA_FULL_ERROR") == "1":
                raise
            print(f"error: {err}", file=sys.stderr)
            sys.exit(EXIT_BAD_INPUT)  # SystemExit passes Hydra's error report untouched
        note(folder, sweep=key == "hydra.sweep.dir")

    @override
    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._check(config, "hydra.run.dir")

    @override
    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._check(config, "hydra.sweep.dir")
