"""The Optuna study of a sweep, kept in a database (Optuna's RDB storage: SQLite by default, any
SQLAlchemy URL), so that a sweep that is killed resumes with its finished trials kept and several sweep
processes can share one study.

Each trial records the sweep process that asked for it (`owner`: host and pid), from its creation on
(it is queued with the owner, then taken). A trial still RUNNING
whose owner process on this host is gone was cut off by a kill: on resume it is marked FAIL with
`interrupted` set (so it does not count as one of the study's finished trials) and its parameters are
queued again, so the restarted sweep runs exactly the trials that did not finish.
"""

from __future__ import annotations

import logging
import os
import socket
from typing import Any

import optuna
from optuna.storages import RDBStorage
from optuna.trial import FrozenTrial, Trial, TrialState

from recipes.errors import RecipeError

log = logging.getLogger(__name__)

OWNER = "owner"
INTERRUPTED = "interrupted"
DIRECTIONS = {"max": "maximize", "min": "minimize", "maximize": "maximize", "minimize": "minimize"}


def open_storage(url: str) -> RDBStorage:
    """The study database at `url`, or one line saying why it cannot be opened."""
    try:
        return RDBStorage(url)
    except Exception as err:  # noqa: BLE001 - SQLAlchemy, its drivers and Optuna raise many types
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise RecipeError(f"hydra.sweeper.storage={url} cannot be opened ({type(err).__name__}: {reason}); give a "
                          f"reachable SQLAlchemy URL, e.g. hydra.sweeper.storage=sqlite:///sweep.db") from None


def direction(value: str) -> str:
    """Optuna's direction for a task's monitor_mode (min/max) or an Optuna direction."""
    if value not in DIRECTIONS:
        raise RecipeError(f"hydra.sweeper.direction={value} must be min or max (the task's monitor_mode), "
                          f"or minimize / maximize")
    return DIRECTIONS[value]


def load(storage: RDBStorage, name: str, sampler: Any, goal: str) -> optuna.Study:
    """Create the study, or load it (a resumed or shared sweep) when it exists with the same direction."""
    try:
        return optuna.create_study(storage=storage, study_name=name, sampler=sampler, direction=goal,
                                   load_if_exists=True)
    except ValueError as err:  # an existing study with another direction
        raise RecipeError(f"study {name!r} in the sweep's storage: {err}; give another hydra.sweeper.study_name") from None


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


def requeue_interrupted(study: optuna.Study) -> int:
    """Mark RUNNING trials of a killed sweep on this host FAIL + interrupted and queue their parameters
    again; returns how many."""
    count = 0
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if _owner_is_gone(trial):
            Trial(study, trial._trial_id).set_user_attr(INTERRUPTED, True)
            study.tell(trial.number, state=TrialState.FAIL)
            study.enqueue_trial(trial.params, user_attrs={OWNER: owner()})
            count += 1
    return count


def finished(study: optuna.Study) -> list[FrozenTrial]:
    """Trials that ran to an end (complete, pruned or failed), not those cut off by a kill."""
    states = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
    return [t for t in study.get_trials(deepcopy=False, states=states) if not t.user_attrs.get(INTERRUPTED)]


def in_flight(study: optuna.Study) -> int:
    """Trials running now (in this or another sweep process sharing the study)."""
    return len(study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)))


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
