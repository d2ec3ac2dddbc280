"""`strategy.timeout`: how long a rank waits in a collective (all-reduce, broadcast, barrier) for the other
ranks before the run fails; `strategy.startup_timeout`: how long ranks wait for each other to start (the
rendezvous, where one rank may still be importing or its node still booting).

gloo's default is 30 minutes for both, so a stopped or hung rank used to keep the others idle for half an
hour. With minutes instead, a run whose rank stops fails with one line naming the knob
(`collective_failure`) and a non-zero exit. One timeout for both would make a short collective timeout fail
slow start-ups, so the process group is created with the start-up one and then set to the collective one
(torch.distributed.set_timeout). Raise `timeout` when ranks legitimately wait longer for each other (a very
slow checkpoint or validation on one rank).
"""

from __future__ import annotations

import math
import os
import signal
from datetime import timedelta
from typing import Any

import torch.distributed as dist
from lightning.pytorch.strategies import DDPStrategy
from lightning.pytorch.strategies.launchers import _MultiProcessingLauncher, _SubprocessScriptLauncher
from torch.multiprocessing import ProcessRaisedException
from typing_extensions import override

from recipes.runtime.process_env import PARENT_AT_START, launched_externally
from recipes.strategies.contract import RecipeStrategy, recipe_strategy

__all__ = [
    "DEFAULT_SECONDS",
    "DEFAULT_STARTUP_SECONDS",
    "TimedDDPStrategy",
    "collective_failure",
    "collective_timeout",
    "leave_group_before_exit",
    "started_by_launcher",
    "stop_started_ranks",
    "wake_launcher",
]

DEFAULT_SECONDS = 300.0
DEFAULT_STARTUP_SECONDS = 600.0


def collective_timeout(seconds: float | timedelta, key: str = "timeout") -> timedelta:
    """`strategy.<key>` (seconds, as the YAML gives it) as the timedelta torch.distributed takes."""
    if isinstance(seconds, timedelta):
        return seconds
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not math.isfinite(seconds) or seconds <= 0:
        example = DEFAULT_SECONDS if key == "timeout" else DEFAULT_STARTUP_SECONDS
        raise ValueError(
            f"strategy.{key}={seconds} must be a positive number of seconds (how long a rank waits "
            f"for the others), e.g. strategy.{key}={example:g}"
        )
    return timedelta(seconds=seconds)


# What gloo's errors say when a peer stopped answering or went away (some reach Python as plain RuntimeErrors,
# e.g. from DDP's reducer, rather than torch.distributed.DistError).
_PEER_LOST = ("timeout caused pair closure", "Timed out", "Connection closed by peer", "Connection reset by peer")


def _lost_peer(err: BaseException) -> bool:
    if isinstance(err, dist.DistError):
        return True
    text = str(err)
    if isinstance(err, ProcessRaisedException):
        return "DistError" in text or "DistBackendError" in text or any(m in text for m in _PEER_LOST)
    return isinstance(err, RuntimeError) and any(marker in text for marker in _PEER_LOST)


def collective_failure(err: BaseException, strategy: Any) -> str | None:
    """One line for a run that failed because another rank stopped answering in a collective, or None
    when `err` is something else. `strategy`'s timeouts and `ranks_met` are the strategy contract's
    (recipes.strategies.contract). A worker started by Lightning's multiprocessing launcher (spawn,
    forkserver) reaches the main process as a ProcessRaisedException that carries its traceback as text."""
    declared = recipe_strategy(strategy)
    if declared.collective_timeout is None:  # one process: no other rank to lose
        return None
    while err is not None and not _lost_peer(err):
        err = err.__cause__ or err.__context__
    if err is None:
        return None
    text = str(err)
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    reason = next((line for line in reversed(lines) if "Error" in line or "timed out" in line.lower()), lines[-1])
    if isinstance(err, ProcessRaisedException):  # a worker's: this process cannot tell which phase it was in
        key, waited = "timeout", " (strategy.startup_timeout while the ranks start)"
    elif declared.ranks_met:
        key, waited = "timeout", f"={declared.collective_timeout.total_seconds():g}s"
    else:
        key, waited = "startup_timeout", f"={declared.startup_timeout.total_seconds():g}s"
    return (
        f"another rank stopped answering within strategy.{key}{waited} (it stopped, died or hung; "
        f"{reason[:200]}): check the other ranks' output, or raise strategy.{key} if ranks legitimately "
        "wait longer for each other"
    )


def stop_started_ranks(strategy: Any) -> None:
    """When the rank that started the others (`start_method=popen`) fails, take them down with it: Lightning
    does so only on Ctrl-C, and a stopped or hung rank would otherwise outlive the run. SIGKILL also ends a
    stopped process. (Workers of spawn / forkserver launches are ended by torch.multiprocessing.)"""
    launcher = strategy.launcher
    if isinstance(launcher, _SubprocessScriptLauncher):
        launcher.kill(signal.SIGKILL)
        for proc in launcher.procs:
            proc.wait(timeout=30)  # reap it: no zombie left behind


def leave_group_before_exit(strategy: Any) -> None:
    """In a worker that Lightning's multiprocessing launcher started (`start_method=spawn` or forkserver):
    leave the process group before the worker exits, which it does right after the fit. A gloo group still
    alive at interpreter exit can abort the worker (SIGABRT, "terminate called without an active
    exception") and fail a run that finished: 5 of 15 two-process spawns here, 0 of 15 after leaving it.
    (`start_method=popen` ranks leave it after the fit: recipes/stages/fit.py.)"""
    if isinstance(strategy.launcher, _MultiProcessingLauncher) and dist.is_initialized():
        dist.destroy_process_group()


def started_by_launcher() -> int | None:
    """The process id of the rank that started this one (Lightning's `start_method=popen` launcher, rank 0
    of this node), read when the process started, while it was surely still its parent; None in a rank that
    no launcher of this run started (rank 0 itself, srun or torchrun workers)."""
    if int(os.environ.get("LOCAL_RANK", "0") or 0) > 0 and not launched_externally():
        return PARENT_AT_START
    return None


def wake_launcher(strategy: Any) -> None:
    """In a rank started by the launcher, after it lost a peer: leave the process groups (every connection
    to this rank closes, so a rank blocked on one fails at once, not after its own timeout), then send the
    launcher SIGCONT. A launcher stopped by SIGSTOP would otherwise never end: its watchdogs stop with it,
    and this rank waits for it to exit first (recipes/runtime/guard.py). Woken, it fails on the closed connection,
    takes this rank down, and ends the run with its one line and exit status; a running launcher is not
    affected by SIGCONT."""
    pid = strategy.launcher_pid
    if pid is None or os.getppid() != pid:  # the launcher is gone: nothing to wake
        return
    if dist.is_initialized():
        dist.destroy_process_group()
    os.kill(pid, signal.SIGCONT)


class TimedDDPStrategy(DDPStrategy, RecipeStrategy):
    """Lightning's DDPStrategy with the run's collective timeout: the process group is created with
    `startup_timeout` (every rank must join within it), then its collectives get `timeout`; a
    failing rank 0 takes the ranks it started down with it, and a rank it started that lost a peer wakes
    it (it may be the rank that was stopped) so that it can end the run. Base of strategy=ddp (and so model_avg)
    and strategy=pipeline; `ranks_met` (the strategy contract) turns True once the process group is up."""

    def __init__(
        self,
        *args: Any,
        timeout: float | timedelta = DEFAULT_SECONDS,
        startup_timeout: float | timedelta = DEFAULT_STARTUP_SECONDS,
        **kwargs: Any,
    ) -> None:
        self.startup_timeout = collective_timeout(startup_timeout, "startup_timeout")
        super().__init__(*args, timeout=self.startup_timeout, **kwargs)
        self.collective_timeout, self.ranks_met = collective_timeout(timeout), False
        self.launcher_pid = started_by_launcher()

    @override
    def setup_distributed(self) -> None:
        super().setup_distributed()  # waits up to the start-up timeout for every rank
        if dist.is_initialized():
            dist.set_timeout(self.collective_timeout)
        self.ranks_met = True

    @override
    def teardown(self) -> None:
        super().teardown()
        leave_group_before_exit(self)  # nothing after the teardown syncs (on_fit_end hooks are rank-local)

    @override
    def on_exception(self, exception: BaseException) -> None:
        super().on_exception(exception)
        stop_started_ranks(self)
        if collective_failure(exception, self) is not None:
            wake_launcher(self)
