"""A Hydra callback that refuses `hydra/launcher=submitit_slurm` on a machine without SLURM, in one line and
before the sweep starts: submitit meets the missing `srun` only when it launches the first batch, after
the sweep dir, the Optuna study and its database exist, and reports it as a page of traceback."""

from __future__ import annotations

import shutil
import sys
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig
from typing_extensions import override

from recipes.errors import EXIT_BAD_INPUT, RecipeError

__all__ = ["SLURM_COMMANDS", "SlurmAvailable", "check_launcher"]

SLURM_COMMANDS = ("srun", "sbatch")  # what submitit's SLURM executor runs: sbatch submits, srun starts each job


def check_launcher(config: DictConfig) -> None:
    """Refuse the SLURM launcher where the SLURM commands are not on PATH."""
    target = str(config.hydra.get("launcher", {}).get("_target_", ""))
    missing = [name for name in SLURM_COMMANDS if shutil.which(name) is None]
    if target.endswith("SlurmLauncher") and missing:
        raise RecipeError(
            f"hydra/launcher=submitit_slurm needs SLURM, and this machine has no {' or '.join(missing)}: run "
            f"the sweep on a SLURM login node, or here with hydra/launcher=submitit_local or hydra/launcher=joblib"
        )


class SlurmAvailable(Callback):
    """Runs at the start of a multirun, before the sweeper opens a study or anything is written."""

    @override
    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        try:
            check_launcher(config)
        except RecipeError as err:  # even with HYDRA_FULL_ERROR=1: Hydra turns a callback's exception into a warning
            print(f"error: {err}", file=sys.stderr)
            sys.exit(EXIT_BAD_INPUT)  # SystemExit passes Hydra's callback guard and its error report untouched
