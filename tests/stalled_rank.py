"""Test-only callback: one rank stops (SIGSTOP, as a debugger, a swapped-out node or `kill -STOP` would)
after its first training batch, to show that the other ranks fail within strategy.timeout.

Added from the command line, e.g. `+callbacks.stall._target_=tests.stalled_rank.StalledRank
+callbacks.stall.rank=1 +callbacks.stall.pid_file=/tmp/x` (run from the repository root, so `tests` imports)."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

from lightning.pytorch.callbacks import Callback
from typing_extensions import override


class StalledRank(Callback):
    """On global rank `rank`, write this process's id to `pid_file`, then stop the process."""

    def __init__(self, pid_file: str, rank: int = 1) -> None:
        self.pid_file, self.rank = Path(pid_file), rank

    @override
    def on_train_batch_end(self, trainer: Any, *args: Any) -> None:
        if trainer.global_rank == self.rank:
            self.pid_file.write_text(str(os.getpid()))
            os.kill(os.getpid(), signal.SIGSTOP)
