"""The Optuna study of a sweep, kept in a database (Optuna's RDB storage: SQLite by default, any
SQLAlchemy URL), so that a sweep that is killed resumes with its finished trials kept and several sweep
processes can share one study.

Each trial records the sweep process that asked for it (`owner`: host and pid), from its creation on
(it is queued with the owner, then taken). A trial still RUNNING whose owner process on this host is
gone was cut off by a kill. On resume, one whose run had finished
(results.json in its job dir, <sweep dir>/<trial number>/) is recorded with its objective; any other
is marked FAIL with `interrupted` set (so it does not count as one of the study's finished trials) and
its parameters are queued again, so the restarted sweep runs exactly the trials that did not finish.
"""

from __future__ import annotations

import fcntl
import json
import logging
import math
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import optuna
from omegaconf import OmegaConf
from optuna.storages import RDBStorage
from optuna.trial import FrozenTrial, Trial, TrialState
from sqlalchemy.engine import make_url

from recipes.errors import RecipeError
from recipes.stages.results import FILE_NAME

__all__ = [
    "DIRECTIONS",
    "FINISHED",
    "INTERRUPTED",
    "OWNER",
    "ask",
    "direction",
    "finished",
    "load",
    "log",
    "open_storage",
    "owner",
    "recover_interrupted",
    "storage_lock",
    "taken",
    "tell",
]

log = logging.getLogger(__name__)

OWNER = "owner"
INTERRUPTED = "interrupted"
DIRECTIONS = {"max": "maximize", "min": "minimize", "maximize": "maximize", "minimize": "minimize"}


@contextmanager
def storage_lock(url: str) -> Iterator[None]:
    """An exclusive lock beside a SQLite database file, held by a sweep while it creates the database, and
    while it counts and asks for trials. SQLite has no row locks: two sweeps creating one new database
    both create its tables (the second fails on alembic's unique version row), and two sweeps popping
    one queued trial both take it (Optuna's check-and-set is atomic only on a server database, with
    SELECT ... FOR UPDATE). A server database (PostgreSQL, MySQL) needs no lock."""
    database = make_url(url).database if url.startswith("sqlite") else None
    if not database or database == ":memory:":
        yield
        return
    with open(f"{database}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, or when a killed process ends
        yield


def open_storage(url: str) -> RDBStorage:
    """The study database at `url`, or one line saying why it cannot be opened."""
    try:
        with storage_lock(url):
            return RDBStorage(url)
    except Exception as err:  # noqa: BLE001 - SQLAlchemy, its drivers and Optuna raise many types
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise RecipeError(
            f"hydra.sweeper.storage={url} cannot be opened ({type(err).__name__}: {reason}); give a "
            f"reachable SQLAlchemy URL, e.g. hydra.sweeper.storage=sqlite:///sweep.db"
        ) from None


def direction(value: str) -> str:
    """Optuna's direction for a task's monitor_mode (min/max) or an Optuna direction."""
    if value not in DIRECTIONS:
        raise RecipeError(
            f"hydra.sweeper.direction={value} must be min or max (the task's monitor_mode), or minimize / maximize"
        )
    return DIRECTIONS[value]


def load(storage: RDBStorage, name: str, sampler: Any, goal: str) -> tuple[optuna.Study, bool]:
    """The study, and whether this process created it: a sweep that finds it (a resumed sweep, or another
    process sharing it) must not replay the seeded sampler's proposals. Which process creates it is
    settled by the database (a study name is unique there), so two sweeps started at once agree."""
    try:
        return optuna.create_study(storage=storage, study_name=name, sampler=sampler, direction=goal), True
    except optuna.exceptions.DuplicatedStudyError:
        pass
    study = optuna.load_study(storage=storage, study_name=name, sampler=sampler)
    if (found := study.direction.name.lower()) != goal:
        raise RecipeError(
            f"study {name!r} in the sweep's storage is to {found}, this sweep's objective is to {goal}; "
            f"give another hydra.sweeper.study_name"
        )
    return study, False


def owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _owner_is_gone(trial: FrozenTrial) -> bool:
    host, _, pid = str(trial.user_attrs.get(OWNER, "")).rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return False  # another machine's sweep: only it knows whether the trial still runs
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return int(pid) == os.getpid()  # this very process asked for it before (an in-process restart)


def _finished_run(trial: FrozenTrial, sweep_dir: Path) -> float | None:
    """The objective of a trial whose run finished (its job dir <sweep dir>/<number>/ holds results.json
    and was launched with the trial's parameters) before the kill stopped the sweep from recording it."""
    job = sweep_dir / str(trial.number)
    results, overrides = job / FILE_NAME, job / ".hydra" / "overrides.yaml"
    if not trial.params or not results.is_file() or not overrides.is_file():
        return None
    launched = {str(line) for line in OmegaConf.load(overrides)}
    if not {f"{key}={value}" for key, value in trial.params.items()} <= launched:
        return None
    best = (json.loads(results.read_text()).get("monitor") or {}).get("best")
    return float(best) if best is not None and math.isfinite(best) else None


def recover_interrupted(study: optuna.Study, sweep_dir: Path) -> tuple[int, int]:
    """RUNNING trials of a killed sweep on this host: a trial whose run had finished is recorded with
    its objective; the others are marked FAIL + interrupted and their parameters queued again.
    Returns (recorded, queued again)."""
    recorded = queued = 0
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if not _owner_is_gone(trial):
            continue
        value = _finished_run(trial, sweep_dir)
        if value is not None:
            study.tell(trial.number, value)
            recorded += 1
            continue
        Trial(study, trial._trial_id).set_user_attr(INTERRUPTED, True)  # FrozenTrial has no public id
        study.tell(trial.number, state=TrialState.FAIL)
        study.enqueue_trial(trial.params, user_attrs={OWNER: owner()})
        queued += 1
    return recorded, queued


FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)


def finished(study: optuna.Study) -> list[FrozenTrial]:
    """Trials that ran to an end (complete, pruned or failed), not those cut off by a kill."""
    return [t for t in study.get_trials(deepcopy=False, states=FINISHED) if not t.user_attrs.get(INTERRUPTED)]


def taken(study: optuna.Study) -> int:
    """Trials that count against the study's n_trials: finished, or running now in any sweep process. One
    read: counting the finished and the running apart misses a trial another process ends in between."""
    trials = study.get_trials(deepcopy=False, states=(*FINISHED, TrialState.RUNNING))
    return len([t for t in trials if not t.user_attrs.get(INTERRUPTED)])


def ask(study: optuna.Study, distributions: dict[str, Any]) -> Trial:
    """A new trial (a queued one first) with its parameters sampled and its owner recorded. The trial
    is queued with the owner first and then taken, so that no kill can leave a RUNNING trial without
    one (which no restart could tell from another process's live trial)."""
    if not study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):  # else take a queued one (it has an owner)
        study.enqueue_trial({}, user_attrs={OWNER: owner()})  # no parameters fixed: the sampler picks them all
    trial = study.ask(fixed_distributions=distributions)
    trial.set_user_attr(OWNER, owner())  # the oldest queued trial may be another process's
    return trial


def tell(study: optuna.Study, trial: Trial, value: float | None) -> bool:
    """Record a trial's objective (None: the trial failed). Returns True when the sampler has run out
    of trials to propose: GridSampler and BruteForceSampler then call Study.stop, which Optuna allows
    only inside study.optimize and refuses here, after recording the trial."""
    try:
        if value is None:
            study.tell(trial, state=TrialState.FAIL)
        else:
            study.tell(trial, value)
    except RuntimeError as err:
        if "Study.stop" not in str(err):
            raise
        return True
    return False
