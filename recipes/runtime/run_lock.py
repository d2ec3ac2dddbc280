"""One run per run dir. A Hydra callback (conf/hydra/default.yaml) takes an exclusive lock on
`<run dir>/.lock` before Hydra writes `.hydra/` there, and holds it until the process ends, so a
second run in the same `hydra.run.dir` refuses in one line (exit 2) and touches nothing of the
first. It also refuses a new run in a finished run dir unless it resumes (`ckpt_path=last`): one of
another recipe always, one of the same recipe (outside a sweep) unless `overwrite=true` asks to train
there again.

Only rank 0 locks: Lightning's DDP children re-run this script in rank 0's dir, and torchrun or srun
start every rank in one shared dir. An flock ends with its process, so a killed run leaves no stale
lock behind (on NFS, flock needs a server with lock support, as every NFS v4 has)."""

from __future__ import annotations

import fcntl
import json
import os
import sys
from pathlib import Path
from typing import Any, TextIO

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from typing_extensions import override

from recipes.errors import EXIT_BAD_INPUT
from recipes.runtime.process_env import process_rank

__all__ = ["LOCK_FILE", "RunDirLock", "finished_recipe", "refuse"]

LOCK_FILE = ".lock"


def refuse(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(EXIT_BAD_INPUT)


def finished_recipe(run_dir: Path) -> str | None:
    """The recipe of the finished run in `run_dir` (its results.json), if any."""
    try:
        return json.loads((run_dir / "results.json").read_text()).get("recipe")
    except (OSError, ValueError, AttributeError):
        return None


class RunDirLock(Callback):
    """Locks the run dir of a run (on_run_start) or of each multirun job (on_job_start; a multirun
    job's dir is its own subdir, and Hydra has written its .hydra/ already at that point)."""

    def __init__(self) -> None:
        self.held: TextIO | None = None

    @override
    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        HydraConfig.instance().set_config(config)  # what run_job does first: ${hydra:...} resolves
        self.lock(Path(str(OmegaConf.select(config, "hydra.run.dir"))), config)

    @override
    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        if config.hydra.mode == RunMode.MULTIRUN:
            self.lock(Path(config.hydra.runtime.output_dir), config)

    @override
    def on_job_end(self, config: DictConfig, **kwargs: Any) -> None:
        if config.hydra.mode == RunMode.MULTIRUN and self.held is not None:
            self.held.close()  # the next job of a sweep runs in this process, in another dir
            self.held = None

    @override
    def on_run_end(self, config: DictConfig, **kwargs: Any) -> None:
        if self.held is not None:  # the run is over; a caller that goes on (a notebook, a test) may start another
            self.held.close()
            self.held = None

    @staticmethod
    def refuse_finished(run_dir: Path, config: DictConfig) -> None:
        """A new run (not a resume) in the finished run dir of another recipe, or of the same recipe
        without `overwrite=true`: its checkpoints would land beside the finished run's (`-v1` names).
        The second rule is not a sweep's: a job dir is its trial's (a search resumed in its sweep dir
        takes new numbers), and a refusal there, after Hydra wrote the job's .hydra/, would end the sweep."""
        recipe, previous = config.hydra.runtime.choices.get("recipe"), finished_recipe(run_dir)
        if not previous or not recipe or config.get("ckpt_path"):
            return
        if previous != recipe:
            refuse(
                f"hydra.run.dir={run_dir} holds a finished recipe={previous} run; a recipe={recipe} run "
                f"there would mix their files: choose another hydra.run.dir (or resume with ckpt_path=last)"
            )
        if not config.get("overwrite") and OmegaConf.select(config, "hydra.mode") != RunMode.MULTIRUN:
            refuse(
                f"hydra.run.dir={run_dir} holds a finished recipe={recipe} run; training it again there would "
                f"write a second set of checkpoints beside its own: resume it with ckpt_path=last, choose a new "
                f"hydra.run.dir, or pass overwrite=true to train again in it"
            )

    def lock(self, run_dir: Path, config: DictConfig) -> None:
        if process_rank() != 0:
            return
        run_dir.mkdir(parents=True, exist_ok=True)
        handle = open(run_dir / LOCK_FILE, "a")  # noqa: SIM115 - held open for the life of the run
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            refuse(
                f"hydra.run.dir={run_dir} is in use by another run (it holds {run_dir / LOCK_FILE}); "
                f"wait for it to end, or choose another hydra.run.dir"
            )
        try:  # checked under the lock (no run can finish there meanwhile), before .lock changes
            self.refuse_finished(run_dir, config)
        except SystemExit:
            handle.close()  # a caller that goes on (a test, a notebook) must not keep the flock
            raise
        handle.truncate(0)
        handle.write(f"{os.getpid()}\n")  # who holds it, for a person looking; the flock is the lock
        handle.flush()
        self.held = handle
