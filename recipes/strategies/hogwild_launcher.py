"""Starting and stopping the worker processes of strategy=async (recipes.strategies.async_sgd).

Workers never fork from the main process: by then torch has run kernels there and started its OpenMP
intra-op thread pool, and a forked child that enters a parallel region waits forever for pool threads that
do not exist in it (a 0%-CPU hang). A fork server, started fresh and importing only code (`preload_modules`),
forks them instead (or spawn starts them), so every worker builds its own pool.

Stopping: no worker outlives the run. SIGTERM to the main process (which trains nothing; it waits for the
workers) sets a shared flag; a thread in each worker watches the flag and the main process, and sends its
worker SIGTERM when the flag is set or the main process has died (kill -9), so that every worker stops at its
next batch end as SIGTERM makes any rank stop (recipes/runtime/interrupt.py: the resume point is last.ckpt from the
last epoch end, no checkpoint is written on the way out). A worker stopped by SIGTERM exits 143; the main
process then stops the others, waits until every worker has exited (it holds the run-dir lock until it exits)
and ends with the one line and exit 143 of any SIGTERM stop. A worker that dies otherwise (kill -9, a crash)
ends the run in one line, exit 1. A worker's parent is the fork server, which outlives a killed main process,
so torch's parent-death signal (SIGINT, mid-batch) is turned off in favour of the watcher.
"""

from __future__ import annotations

import logging
import os
import select
import signal
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.multiprocessing as mp
from lightning.pytorch.strategies.launchers import _MultiProcessingLauncher
from lightning.pytorch.utilities.exceptions import SIGTERMException
from torch import Tensor
from torch.multiprocessing import _prctl_pr_set_pdeathsig
from torch.multiprocessing.spawn import ProcessException, ProcessExitedException
from typing_extensions import override

from recipes.errors import EXIT_SIGTERM, RunStopped
from recipes.runtime.interrupt import how_to_go_on, stopped, stopped_by_sigterm

__all__ = ["HogwildLauncher", "preload_modules"]

_REASON_BYTES = 4096  # room for a worker's one-line reason (a RunStopped message, its remedy)
_REMEDY_MARK = "\x1f"  # between a reason and what to do about it (CheckpointWriteError.remedy)


class HogwildLauncher(_MultiProcessingLauncher):
    """Lightning's multiprocessing launcher, with the parameters in shared memory before workers start
    (the strategy's `share_parameters`), and every worker stopped with the main process (see "Stopping")."""

    @override
    def launch(self, function: Callable, *args: Any, trainer: Any = None, **kwargs: Any) -> Any:
        self._strategy.share_parameters()
        if self._start_method == "forkserver":
            mp.set_forkserver_preload(preload_modules())
        spawn_log = logging.getLogger("torch.multiprocessing.spawn")
        if not any(isinstance(f, _DropStopNotice) for f in spawn_log.filters):
            spawn_log.addFilter(_DropStopNotice())
        self._main_pid = os.getpid()
        self._stop = torch.zeros((), dtype=torch.bool).share_memory_()  # set on SIGTERM: every worker stops
        # a worker's own one-line reason for stopping (a RunStopped: diverged, a checkpoint it could not write)
        self._reasons = torch.zeros((self._strategy.num_processes, _REASON_BYTES), dtype=torch.uint8).share_memory_()
        in_main_thread = threading.current_thread() is threading.main_thread()  # only it may set a handler
        previous = signal.signal(signal.SIGTERM, self._stop_workers) if in_main_thread else None
        try:
            # torch's join: once a worker exits non-zero, the others get SIGTERM (SIGKILL 30 s later) and
            # are all reaped before ProcessExitedException / ProcessRaisedException reaches here.
            return super().launch(function, *args, trainer=trainer, **kwargs)
        except ProcessException as err:
            raise self._one_line(err) from None
        finally:
            if in_main_thread:
                signal.signal(signal.SIGTERM, previous)

    def _stop_workers(self, signum: int, frame: Any) -> None:
        """The main process's SIGTERM handler: the flag reaches every worker, one still starting included."""
        self._stop.fill_(True)

    def _one_line(self, err: ProcessException) -> BaseException:
        """What ends the run when a worker did not finish: exit 143 when SIGTERM stopped it (sent to the main
        process, to that worker, or to the whole process group), one line and exit 1 when it died, else the
        worker's own error (which carries its traceback)."""
        exited = isinstance(err, ProcessExitedException)
        if bool(self._stop) or (exited and err.exit_code in (EXIT_SIGTERM, -signal.SIGTERM)):
            return stopped_by_sigterm(self._strategy.epoch_in_progress)
        if not exited:
            return err
        reason = bytes(self._reasons[err.error_index].tolist()).rstrip(b"\0").decode(errors="replace")
        if reason:  # the worker's own RunStopped: its line, and how to go on where it names a fix
            message, _, remedy = reason.partition(_REMEDY_MARK)
            return RunStopped(f"{message}: {how_to_go_on(remedy)}" if remedy else message, err.exit_code)
        how = f"was killed by {err.signal_name}" if err.exit_code < 0 else f"exited with status {err.exit_code}"
        return stopped(
            f"async worker {err.error_index} (pid {err.error_pid}) {how} during epoch "
            f"{self._strategy.epoch_in_progress}, so the other workers were stopped"
        )

    @override
    def _wrapping_function(self, process_idx: int, *args: Any, **kwargs: Any) -> None:
        """A worker: watch the main process, and exit 143 (not Lightning's 0) when SIGTERM stopped it."""
        _prctl_pr_set_pdeathsig(0)  # torch's SIGINT on the fork server's death: see the watcher instead
        threading.Thread(target=_watch_main_process, args=(self._main_pid, self._stop), daemon=True).start()
        try:
            super()._wrapping_function(process_idx, *args, **kwargs)
        except SIGTERMException:
            sys.exit(EXIT_SIGTERM)
        except RunStopped as err:  # told to the main process, which prints the run's one line
            remedy = getattr(err, "remedy", "")
            text = (f"{err}{_REMEDY_MARK}{remedy}" if remedy else str(err)).encode()[: _REASON_BYTES - 1]
            self._reasons[process_idx, : len(text)] = torch.tensor(list(text), dtype=torch.uint8)
            sys.exit(err.exit_code)


class _DropStopNotice(logging.Filter):
    """torch logs a warning for each worker it stops after another one exited: that is how every stop
    goes here, and the run's one line says why; its SIGKILL warning (a worker that did not stop) stays."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Terminating process")


def _watch_main_process(pid: int, stop: Tensor, every: float = 0.2) -> None:
    """A worker's daemon thread: SIGTERM to its own worker once the main process asks every worker to stop
    (it got SIGTERM) or has died (kill -9: it can ask nothing), so that the worker stops at its next batch end,
    as SIGTERM makes any rank stop, or exits at once when it has not started training yet."""
    gone = _exit_check(pid)
    while not (bool(stop) or gone(every)):
        pass
    os.kill(os.getpid(), signal.SIGTERM)


def _exit_check(pid: int) -> Callable[[float], bool]:
    """A function that waits up to its argument's seconds and says whether process `pid` has exited: a pidfd
    (Linux) tells of the exit itself, a zombie included; elsewhere, whether the pid is still there."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return lambda seconds: True
    except (AttributeError, OSError):  # no pidfd: not Linux, or a kernel before 5.3
        return lambda seconds: time.sleep(seconds) or not _pid_exists(pid)
    return lambda seconds: bool(select.select([fd], [], [], seconds)[0])


def _pid_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def preload_modules() -> list[str]:
    """What the fork server imports once, so that each worker it forks starts warm instead of importing torch,
    Lightning and the recipe again: Lightning and the modules of the script's package loaded so far (for
    `python -m recipes.train`, every recipes.* module but recipes.train itself, which each worker runs as its
    __mp_main__). Importing runs no torch kernel, so the server never starts the intra-op thread pool that
    forking would break; each worker starts its own."""
    main = getattr(sys.modules["__main__"], "__spec__", None)
    if main is None or not main.name:
        return ["lightning.pytorch"]
    package = main.name.partition(".")[0]
    return [
        "lightning.pytorch",
        *(name for name in list(sys.modules) if name.partition(".")[0] == package and name != main.name),
    ]
