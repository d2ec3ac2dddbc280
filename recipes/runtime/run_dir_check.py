"""A Hydra callback that refuses, in one line and before Hydra creates or writes anything, a run dir
(or sweep dir) that cannot be written: below a regular file, in a folder without write access (or on
a read-only file system), with a folder name longer than its file system allows, or an existing run
dir whose folders (checkpoints/, csv/, .hydra/, ...) cannot be written, which a resume would otherwise
meet only when it writes its first checkpoint, an epoch later. It runs first, so it also records
what the run will create there (recipes/runtime/created_dirs.py)."""

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

from recipes.errors import RecipeError
from recipes.runtime.created_dirs import note

__all__ = ["FILE_NAME_ROOM", "RUN_FOLDERS", "WritableRunDir", "check_writable"]

# The folders a run writes in its run dir (Hydra's .hydra/, conf/callbacks, conf/logger, recipes/stages/shipping.py):
# in an existing run dir (a resume) each one that exists is probed too.
RUN_FOLDERS = (".hydra", "checkpoints", "csv", "tensorboard", "export")
# Room left in a run dir's path for the files a run writes in it (checkpoints/epoch012-acc0.9722.ckpt, ...).
FILE_NAME_ROOM = 64


def check_writable(folder: Path, key: str) -> None:
    """Probe the folder, or the nearest ancestor that exists (creating nothing that Hydra would not),
    and the folders an existing run dir holds; check the names still to be created against the limits
    of the file system they go on."""
    existing = folder
    while not os.path.exists(existing) and existing != existing.parent:  # os.path: False on ENAMETOOLONG too
        existing = existing.parent
    if not existing.is_dir():
        raise RecipeError(f"{key}={folder} cannot be created: {existing} is a file, not a folder; choose another {key}")
    _check_names(folder, existing, key)
    inside = [folder / name for name in RUN_FOLDERS if existing == folder and (folder / name).is_dir()]
    for probed in [existing, *inside]:
        try:
            with tempfile.TemporaryFile(dir=probed):
                pass
        except OSError as err:
            raise RecipeError(
                f"{key}={folder} cannot be written ({err.strerror} in {probed}); make it writable or choose "
                f"another {key}"
            ) from None


def _check_names(folder: Path, existing: Path, key: str) -> None:
    """ENAMETOOLONG before Hydra meets it: each folder name still to be created, and the whole path
    with room for the run's own files, within the limits of the file system at `existing`."""
    name_max, path_max = os.pathconf(existing, "PC_NAME_MAX"), os.pathconf(existing, "PC_PATH_MAX")
    for name in folder.parts[len(existing.parts) :]:
        if (size := len(os.fsencode(name))) > name_max:
            raise RecipeError(
                f"{key}={folder} cannot be created: a folder name of {size} bytes ({name[:16]}...) is longer "
                f"than the {name_max} its file system allows; choose a shorter {key}"
            )
    if (size := len(os.fsencode(folder.absolute()))) + FILE_NAME_ROOM > path_max:
        raise RecipeError(
            f"{key}={folder} cannot be created: its path of {size} bytes leaves no room for the run's files "
            f"within the {path_max} its file system allows; choose a shorter {key}"
        )


class WritableRunDir(Callback):
    """Runs at the start of a run or a multirun, when Hydra has composed the config but not yet made
    the run dir, so the refusal leaves nothing behind."""

    @staticmethod
    def _check(config: DictConfig, key: str) -> None:
        from recipes.errors import EXIT_BAD_INPUT
        from recipes.runtime.process_env import process_rank

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
