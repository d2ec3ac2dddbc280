"""Test-only callback: slow one worker down on purpose, to show that asynchronous workers do not wait.

Added from the command line, e.g. `+callbacks.slow._target_=tests.helpers.slow_worker.SlowWorker
+callbacks.slow.rank=1 +callbacks.slow.seconds=0.05` (run from the repository root, so `tests` imports)."""

from __future__ import annotations

import time
from typing import Any

from lightning.pytorch.callbacks import Callback

# Rank 0 slowed to 0.1 s a batch over a short epoch: a run that is still training when a test signals it.
SLOW_STEPS = [
    "+callbacks.slow._target_=tests.helpers.slow_worker.SlowWorker",
    "+callbacks.slow.rank=0",
    "+callbacks.slow.seconds=0.1",
    "trainer.limit_train_batches=10",
    "trainer.limit_val_batches=2",
]


class SlowWorker(Callback):
    """Sleep `seconds` after every training batch on global rank `rank`."""

    def __init__(self, rank: int = 1, seconds: float = 0.05) -> None:
        if rank < 0 or seconds < 0:
            raise ValueError(
                f"callbacks.slow: rank={rank} and seconds={seconds} must be >= 0, e.g. rank=1 seconds=0.05"
            )
        self.rank, self.seconds = rank, seconds

    def on_train_batch_end(self, trainer: Any, *args: Any) -> None:
        if trainer.global_rank == self.rank:
            time.sleep(self.seconds)
