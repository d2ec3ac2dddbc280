"""Hyper-parameter search: a Hydra sweeper that asks Optuna for trials, launches them with Hydra's
launcher (basic: one after another; joblib: `n_jobs` at once on this machine; submitit: SLURM jobs)
and tells Optuna each trial's objective, the value `recipes.train` returns: the task's monitored
metric (`task.monitor`) at the run's best checkpoint, its direction the task's `monitor_mode`.

Why not hydra-optuna-sweeper: its last release (1.3.0) still requires optuna<3, and Optuna 2.10's
RDB storage fails with SQLAlchemy 2 (and its alembic migrations with alembic >= 1.14), so it would pin
the project to a 2021 Optuna and a SQLAlchemy 1.4 that nothing else here wants. This sweeper keeps its
config keys (sampler, direction, storage, study_name, n_trials, n_jobs, max_failure_rate, params) and
its search-space grammar (recipes/sweep/search_space.py) on a current Optuna, and adds what the sweeps here
need: a study that resumes where a killed sweep stopped (recipes/sweep/study.py), trials that fail or
diverge recorded FAIL while the sweep goes on, and bad input refused in one line before any trial.

`n_trials` is the study's total, shared by every sweep process of the study, not a count per process as
in Optuna's `study.optimize(n_trials=...)` (nor as in hydra-optuna-sweeper, which runs n_trials more on
each start): a sweep asks for trials while the study's finished and running ones number fewer, so a
restarted sweep runs only what a kill left, and a second process on the study shares the work instead of
doubling it. On SQLite the count and the asking are one locked step (study.storage_lock), so processes
run exactly n_trials between them; on a server database ones asking at the same moment may each start
one batch more. Each trial runs in <sweep dir>/<trial number>, whatever the launcher numbers its jobs.

A trial in a process of its own that the sweep started (hydra/launcher=joblib: loky's workers) ends
with the sweep: a sweep killed with SIGKILL cannot stop its workers, so each worker watches for it
(DieWithSweeper), instead of finishing trials that nobody records.

Hydra instantiates sweepers only from the `hydra_plugins` package: the class it names is
hydra_plugins/recipes_optuna_sweeper, a subclass of this one.
"""

from __future__ import annotations

import logging
import math
import multiprocessing
import os
import shutil
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.core.plugins import Plugins
from hydra.core.utils import JobReturn
from hydra.errors import ConfigCompositionException
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf
from typing_extensions import override

from recipes.errors import RecipeError, RunStopped
from recipes.runtime.overrides import unknown_key_message

__all__ = [
    "DieWithSweeper",
    "OptunaSweeper",
    "PARENT_POLL_S",
    "RESULTS_FILE",
    "exit_with_parent",
    "log",
    "objective_of",
]

log = logging.getLogger(__name__)

RESULTS_FILE = "optimization_results.yaml"


def objective_of(ret: JobReturn) -> tuple[float | None, str | None]:
    """A finished job's objective, or None and why the trial failed (an exception, no value, NaN/inf)."""
    try:
        value = ret.return_value  # re-raises the job's exception
    except Exception as err:  # noqa: BLE001 - whatever the run raised, the trial failed
        return None, (str(err).strip().splitlines() or [type(err).__name__])[0]
    if value is None:
        return None, "the run returned no objective (its task.monitor was never logged)"
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None, f"the run returned {value!r}, not a number"
    if not math.isfinite(value):
        return None, f"the objective is {value}"
    return value, None


PARENT_POLL_S = 0.2  # how often a trial's worker looks for its sweep: it ends at most this long after it
_watching: set[int] = set()  # the sweep pids this process already watches (a loky worker runs many trials)


def exit_with_parent(parent: int) -> None:
    """End this process, from a daemon thread, as soon as `parent` is no longer its parent (it died and
    the process was re-parented; at once if that happened already). `parent` is compared with os.getppid(), never probed by pid, which a
    new process may reuse. Only this process ends: its own children (a data loader's workers, loky's
    resource tracker) watch it in turn."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(PARENT_POLL_S)
        log.warning(f"the sweep (pid {parent}) is gone: this trial's process (pid {os.getpid()}) ends too")
        os._exit(1)  # no clean-up: the trial is recorded as interrupted and run again when the sweep resumes

    threading.Thread(target=watch, name="exit-with-sweep", daemon=True).start()


class DieWithSweeper:
    """The task function as the sweeper hands it to its launcher. In a trial run by a process that the
    sweep process started with multiprocessing (joblib's loky workers: multiprocessing.parent_process()
    is the sweep, recorded when the worker started, so a sweep killed before the trial began counts
    too), it first makes the process end with the sweep (exit_with_parent). The basic launcher runs
    trials in the sweep's own process; submitit's jobs are meant to outlive the process that submitted
    them (SLURM jobs, and submitit_local's emulation of them): neither is watched. Picklable, as loky needs."""

    def __init__(self, task_function: TaskFunction, sweep_pid: int) -> None:
        self.task_function, self.sweep_pid = task_function, sweep_pid
        self.__name__ = getattr(task_function, "__name__", type(self).__name__)

    def __call__(self, cfg: DictConfig) -> Any:
        started_by = multiprocessing.parent_process()
        if started_by is not None and started_by.pid == self.sweep_pid and self.sweep_pid not in _watching:
            _watching.add(self.sweep_pid)
            exit_with_parent(self.sweep_pid)
        return self.task_function(cfg)


class OptunaSweeper(Sweeper):
    """See the module docstring; conf/hydra/sweeper/optuna.yaml documents every argument."""

    def __init__(
        self,
        sampler: Any,
        direction: str,
        storage: str,
        study_name: str,
        n_trials: int,
        n_jobs: int,
        max_failure_rate: float,
        params: DictConfig | None = None,
    ) -> None:
        self.sampler, self.direction, self.storage, self.study_name = sampler, direction, storage, study_name
        self.n_trials, self.n_jobs, self.max_failure_rate = int(n_trials), int(n_jobs), float(max_failure_rate)
        self.params = params
        self.config: DictConfig | None = None
        self.hydra_context: HydraContext | None = None
        self.launcher: Any = None

    @override
    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config, self.hydra_context = config, hydra_context
        self.launcher = Plugins.instance().instantiate_launcher(
            config=config,
            hydra_context=hydra_context,
            task_function=DieWithSweeper(task_function, os.getpid()),
        )

    def _check_numbers(self) -> None:
        if self.n_trials < 1 or self.n_jobs < 1:
            raise RecipeError(
                f"hydra.sweeper.n_trials={self.n_trials} and hydra.sweeper.n_jobs={self.n_jobs} "
                f"must be at least 1, e.g. hydra.sweeper.n_trials=20 hydra.sweeper.n_jobs=2"
            )
        if not 0.0 <= self.max_failure_rate <= 1.0:
            raise RecipeError(f"hydra.sweeper.max_failure_rate={self.max_failure_rate} must be in [0, 1]")

    def _probe(self, overrides: list[str]) -> DictConfig:
        """Compose one trial's config and run the start-up checks on it, so a search space over a key
        that does not exist, or a plan the run would refuse, stops the sweep before any trial."""
        from recipes.assembly.startup_checks import check_startup

        assert self.config is not None and self.hydra_context is not None
        try:
            cfg = self.hydra_context.config_loader.load_sweep_config(self.config, overrides)
        except ConfigCompositionException as err:
            line = unknown_key_message(err) or str(err).strip().splitlines()[0]
            raise RecipeError(f"the search space does not fit the config: {line}") from None
        HydraConfig.instance().set_config(cfg)
        try:
            check_startup(cfg, dict(cfg.hydra.runtime.choices))
        finally:
            HydraConfig.instance().set_config(self.config)
        return cfg

    def _open_study(self, sweep_dir: Path, probe: DictConfig) -> Any:
        from recipes.sweep import study as studies

        goal = studies.direction(str(self.direction))
        created = not sweep_dir.exists()
        sweep_dir.mkdir(parents=True, exist_ok=True)  # the default SQLite database lives there
        try:
            study, new = studies.load(studies.open_storage(self.storage), self.study_name, self.sampler, goal)
        except RecipeError:
            if created:
                shutil.rmtree(sweep_dir, ignore_errors=True)
            raise
        study.set_user_attr("objective", str(probe.task.monitor))
        if not new:  # resumed, or shared with a sweep started at the same time: do not replay the seeded proposals
            self.sampler.reseed_rng()
        return study

    @override
    def sweep(self, arguments: list[str]) -> None:
        from recipes.sweep import search_space
        from recipes.sweep import study as studies

        assert self.config is not None
        self._check_numbers()
        entries = [f"{key}={value}" for key, value in (self.params or {}).items()]
        space = search_space.parse(entries + list(arguments))
        if not space.distributions:
            raise RecipeError(
                "the sweep has nothing to search: pick hparams_search=baseline|distill|prune, or give "
                "hydra.sweeper.params, e.g. 'task.optimizer.lr=tag(log, interval(1e-4, 1e-1))'"
            )
        probe = self._probe(space.probe())
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        study = self._open_study(sweep_dir, probe)
        with studies.storage_lock(self.storage):  # two restarted sweeps must not both queue a trial again
            recorded, requeued = studies.recover_interrupted(study, sweep_dir)
        log.info(
            f"study {study.study_name!r} ({self.storage}): objective {probe.task.monitor} "
            f"({study.direction.name.lower()}), {len(studies.finished(study))} of {self.n_trials} trials "
            f"finished before ({recorded} of them recorded now), {requeued} interrupted trials queued again"
        )
        self._run_trials(study, space)
        self._report(study, sweep_dir)

    def _run_trials(self, study: Any, space: Any) -> None:
        from recipes.sweep import study as studies

        ran = failed = 0
        exhausted = False
        while not exhausted and (trials := self._ask(study, space)):
            # Each job's dir is its trial's number. Hydra's launchers number a batch's jobs on from
            # initial_job_idx, but a sweep sharing the study may take numbers in between.
            batch: Sequence[Sequence[str]] = [
                [*space.overrides(trial.params), f"hydra.sweep.subdir={trial.number}"] for trial in trials
            ]
            returns = self.launcher.launch(batch, initial_job_idx=trials[0].number)
            for trial, ret in zip(trials, returns, strict=True):
                value, why = objective_of(ret)
                if why is not None:
                    log.warning(f"trial {trial.number} failed ({why}); the sweep goes on")
                    failed += 1
                exhausted = studies.tell(study, trial, value) or exhausted
            ran += len(trials)
            if failed / ran > self.max_failure_rate:
                raise RunStopped(
                    f"{failed} of {ran} trials failed, more than hydra.sweeper.max_failure_rate="
                    f"{self.max_failure_rate}: see the trials' train.log under {self.config.hydra.sweep.dir}"
                )

    def _ask(self, study: Any, space: Any) -> list[Any]:
        """The next batch: up to n_jobs trials, no more than the study's n_trials leave to run, counting
        those that finished or run now in any sweep process of the study. On SQLite, counting and asking
        happen under one lock, so sweeps sharing the study run exactly n_trials between them."""
        from recipes.sweep import study as studies

        with studies.storage_lock(self.storage):
            todo = self.n_trials - studies.taken(study)
            return [studies.ask(study, space.distributions) for _ in range(min(self.n_jobs, todo))]

    def _report(self, study: Any, sweep_dir: Path) -> None:
        """Log the best trial and write optimization_results.yaml (as hydra-optuna-sweeper does)."""
        from optuna.trial import TrialState

        if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
            log.warning("no trial completed: there is no best trial")
            return
        best = study.best_trial
        log.info(f"best trial {best.number}: {study.user_attrs.get('objective')}={best.value} with {best.params}")
        results = OmegaConf.create(
            {
                "name": "optuna",
                "study_name": study.study_name,
                "storage": str(self.storage),
                "objective": study.user_attrs.get("objective"),
                "direction": study.direction.name.lower(),
                "best_trial": best.number,
                "best_value": best.value,
                "best_params": best.params,
            }
        )
        OmegaConf.save(results, sweep_dir / RESULTS_FILE)
