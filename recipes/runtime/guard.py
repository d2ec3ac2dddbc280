"""The guard every entry point runs its job in: a RecipeError becomes one line on stderr, exit 2 and no
half-written run dir; a RunStopped (diverged, SIGTERM, Ctrl-C) one line and its exit status, the run
dir kept; in a search trial, a failed trial that the sweep records and goes on from."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from recipes.errors import EXIT_BAD_INPUT, EXIT_SIGINT, EXIT_SIGTERM, RecipeError, RunStopped
from recipes.runtime import overrides
from recipes.runtime.created_dirs import remove_created
from recipes.runtime.libraries import drop_nvml_check_without_gpus, log_libraries_to_file, quiet_libraries
from recipes.runtime.process_env import PARENT_AT_START, launched_externally, process_rank
from recipes.runtime.resolvers import register_resolvers

__all__ = ["TrialFailed", "guarded", "in_search_trial", "require_set", "run_main"]


def _outlive_launcher(timeout_s: float = 60.0) -> None:
    """In a DDP child that Lightning started: wait (a while) for the launcher, rank 0, to exit first.
    Lightning's process observer SIGKILLs the launcher as soon as a child exits non-zero, which would
    cut off its message and turn its exit status into 137. The parent is the one recorded at start: one
    read now would be whoever adopted the child if the launcher had already died (kill -9), and the
    child would wait out the whole timeout for it."""
    if launched_externally():
        return
    deadline = time.monotonic() + timeout_s
    while os.getppid() == PARENT_AT_START and time.monotonic() < deadline:
        time.sleep(0.1)


def _sweep_dir() -> Path | None:
    """The sweep dir of a multirun job, else None."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return None
    return Path(HydraConfig.get().sweep.dir)


def _remove_fresh(run_dir: str) -> None:
    """Remove what this run created: its run dir (or, in a folder that existed, the entries it added)
    and the parents made for it, and a sweep dir this sweep made that holds only Hydra's multirun.yaml."""
    remove_created(run_dir)
    sweep = _sweep_dir()
    if sweep is not None and sweep.is_dir() and all(p.name == "multirun.yaml" for p in sweep.iterdir()):
        remove_created(sweep)


# What a value the config leaves `???` (required) is, for the one line that asks for it.
_REQUIRED_HINTS = {
    "ckpt_path": "a .ckpt that recipes.train wrote, e.g. ckpt_path=runs/a/checkpoints/last.ckpt",
    "data.root": "the ImageFolder tree, e.g. data.root=/data/pets",
}


def require_set(cfg: Any) -> None:
    """Refuse a config that leaves a required (`???`) value unset, in one line naming it and what it takes,
    rather than the MissingMandatoryValue traceback its first read would raise."""
    from omegaconf import DictConfig, OmegaConf

    if not isinstance(cfg, DictConfig):
        return
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        key = missing[0]
        raise RecipeError(f"{key} is required and not set: pass {_REQUIRED_HINTS.get(key, f'{key}=VALUE')}")


class TrialFailed(Exception):
    """A trial of a search (recipes/sweep/sweeper.py) that failed or diverged: raised instead of exiting, so
    that Hydra records the job as failed, the sweeper tells Optuna and the sweep goes on."""


def in_search_trial() -> bool:
    """True in a job launched by the Optuna sweeper (hydra/sweeper=optuna, e.g. hparams_search=NAME)."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return False
    target = str(HydraConfig.get().sweeper.get("_target_", ""))
    return target.endswith("recipes_optuna_sweeper.OptunaSweeper")


def guarded(task: Callable[[Any], Any], cfg: Any, run_dir: str | None = None) -> Any:
    """Run `task(cfg)`; on RecipeError print one line, remove a run dir this run created, exit 2; on
    RunStopped (diverged, SIGTERM) print one line (rank 0) and exit with its code, keeping the run dir.
    In a search trial, both raise TrialFailed instead (the line printed alike), except a SIGTERM or a
    SIGINT, which stops the sweep as it stops a run."""
    quiet_libraries()  # again here: a submitit job calls the task function without run_main
    log_libraries_to_file()
    drop_nvml_check_without_gpus()  # after Lightning's import set it: see recipes/runtime/libraries.py
    try:
        require_set(cfg)
        return task(cfg)
    except RunStopped as err:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        if process_rank() == 0:  # every rank stops alike; one line is enough
            print(f"error: {err}", file=sys.stderr)
        else:
            _outlive_launcher()
        if err.exit_code not in (EXIT_SIGTERM, EXIT_SIGINT) and in_search_trial():
            raise TrialFailed(str(err)) from None
        sys.exit(err.exit_code)
    except RecipeError as err:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        if run_dir is not None and process_rank() == 0:
            _remove_fresh(run_dir)
        print(f"error: {err}", file=sys.stderr)
        if in_search_trial():
            raise TrialFailed(str(err)) from None
        sys.exit(EXIT_BAD_INPUT)


def run_main(hydra_main: Callable[[], Any]) -> None:
    """Console-script body: pre-flight the overrides, then hand over to the @hydra.main function."""
    register_resolvers()
    quiet_libraries()
    overrides.install()  # a misspelt override key: one line with the near name, exit 2
    try:
        overrides.preflight(sys.argv[1:])
    except RecipeError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)
    hydra_main()
