"""The step counts of strategy=async's workers (recipes.strategies.async_sgd), and the one wait of the run.

Counters live in shared memory, made in the main process before the workers start: each worker counts its
optimizer steps into them, and the main process reads them after fit for results.json's `parallel` section
(each worker's steps, all counts at the moment the first worker finished, rank 0's final wait).

The one wait is at the very end: when rank 0 has made its last update, it waits (a semaphore that each
other worker releases after its own last update) before its final validation and checkpoint, so that these
hold every worker's updates. No other worker ever waits.
"""

from __future__ import annotations

import time
from typing import Any

import torch
import torch.multiprocessing as mp
from lightning.pytorch.utilities.exceptions import SIGTERMException
from torch import Tensor

from recipes.runtime.interrupt import sigterm_noted

__all__ = ["WorkerCounts", "training_over"]


class WorkerCounts:
    """Mixin of AsyncSGDStrategy: the shared counters and the final wait. It reads the strategy's ranks
    (global_rank, local_rank, num_processes) and its module's trainer."""

    _steps: Tensor | None = None  # [world] optimizer steps per worker
    _steps_at_finish: Tensor | None = None  # [world, world] row r: all counts when worker r finished
    _finished_at: Tensor | None = None  # [world] wall time each worker finished training
    _final_wait: Tensor | None = None  # [] seconds rank 0 waited for the others at the end
    _epoch: Tensor | None = None  # [] the epoch local rank 0 trains, for the main process
    _others_done: Any = None  # a multiprocessing Semaphore: see finish_training
    _marked_done = False

    def share_counters(self, world: int, start_method: str) -> None:
        """The counters in shared memory (main process, before workers start) for `world` workers."""
        self._steps = torch.zeros(world, dtype=torch.long).share_memory_()
        self._steps_at_finish = torch.zeros(world, world, dtype=torch.long).share_memory_()
        self._finished_at = torch.full((world,), float("inf"), dtype=torch.float64).share_memory_()
        self._final_wait = torch.zeros((), dtype=torch.float64).share_memory_()
        # Released once by every other worker when its training is over; rank 0 takes them all before its
        # final validation and checkpoint. No other worker ever waits.
        self._others_done = mp.get_context(start_method).Semaphore(0)
        self._epoch = torch.zeros((), dtype=torch.long).share_memory_()

    @property
    def epoch_in_progress(self) -> int:
        """The epoch this node's local rank 0 was training (read by the main process when a worker stops)."""
        return 0 if self._epoch is None else int(self._epoch)

    def count_step(self) -> None:
        """After each optimizer step of this worker."""
        self._steps[self.global_rank] += 1
        if self.local_rank == 0:
            self._epoch.fill_(self.lightning_module.trainer.current_epoch)

    def finish_training(self) -> bool:
        """This worker has made its last update: record the counts; local rank 0 then waits for every other
        worker, so that its final validation and checkpoint hold all the workers' updates. True once local
        rank 0 has waited (the first call only)."""
        if self._marked_done:
            return False
        self._marked_done = True
        rank = self.global_rank
        self._steps_at_finish[rank] = self._steps
        self._finished_at[rank] = time.time()
        if self.local_rank != 0:
            self._others_done.release()
            return False
        start, waiting = time.perf_counter(), self.num_processes - 1
        while waiting:
            if self._others_done.acquire(timeout=0.2):
                waiting -= 1
            elif sigterm_noted(self.lightning_module.trainer):  # a worker stopped or died: it will never release
                raise SIGTERMException
        self._final_wait.fill_(time.perf_counter() - start)
        return True

    def worker_extra(self) -> dict[str, Any]:
        """results.json's `parallel` keys of the workers, read in the main process after fit: the optimizer
        steps each worker applied to the shared weights, every worker's count at the moment the first one
        finished, and how long rank 0 waited at the end for the others."""
        if self._steps is None:
            return {}
        first = int(self._finished_at.argmin())
        return {
            "worker_steps": self._steps.tolist(),
            "worker_steps_at_first_finish": self._steps_at_finish[first].tolist(),
            "final_wait_seconds": round(float(self._final_wait), 3),
        }


def training_over(trainer: Any) -> bool:
    """Whether the batch just trained was this worker's last of the whole fit (max_steps or last epoch)."""
    epoch_loop = trainer.fit_loop.epoch_loop
    steps_done = trainer.max_steps != -1 and trainer.global_step >= trainer.max_steps
    last_epoch = trainer.max_epochs not in (None, -1) and trainer.current_epoch + 1 >= trainer.max_epochs
    return steps_done or (last_epoch and epoch_loop._num_ready_batches_reached())
