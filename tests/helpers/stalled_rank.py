"""Test-only callback: one rank stops (SIGSTOP, as a debugger, a swapped-out node or `kill -STOP` would)
after its first training batch, to show that the other ranks fail within strategy.timeout.

Added from the command line, e.g. `+callbacks.stall._target_=tests.helpers.stalled_rank.StalledRank
+callbacks.stall.rank=1 +callbacks.stall.pid_file=/tmp/x` (run from the repository root, so `tests` imports).
With `+callbacks.stall.in_step=true` the rank stops inside its next training step instead, at its first
layer's forward: in strategy=pipeline the other ranks are then waiting in the schedule's point-to-point
transfers rather than in a collective between batches."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

from lightning.pytorch.callbacks import Callback
from torch.utils.hooks import RemovableHandle
from typing_extensions import override


class StalledRank(Callback):
    """On global rank `rank`, write this process's id to `pid_file`, then stop the process."""

    def __init__(self, pid_file: str, rank: int = 1, in_step: bool = False) -> None:
        self.pid_file, self.rank, self.in_step = Path(pid_file), rank, in_step
        self._hooks: list[RemovableHandle] = []

    @override
    def on_train_batch_end(self, trainer: Any, pl_module: Any, *args: Any) -> None:
        if trainer.global_rank != self.rank or self._hooks:
            return
        if not self.in_step:
            self._stop()
            return
        leaves = [m for m in pl_module.modules() if next(m.children(), None) is None]
        self._hooks = [m.register_forward_pre_hook(self._stop_in_forward) for m in leaves]

    def _stop_in_forward(self, *_: Any) -> None:
        for hook in self._hooks:
            hook.remove()
        self._stop()

    def _stop(self) -> None:
        self.pid_file.write_text(str(os.getpid()))
        os.kill(os.getpid(), signal.SIGSTOP)
