"""Test-only callback: a fault at a chosen moment of a real run, to show what a resume makes of it.

Added from the command line, e.g. `+callbacks.kill._target_=tests.kill_at.KillAt +callbacks.kill.step=25`
(a signal after that training step) or `+callbacks.kill.save=2` (a signal while the run's second
checkpoint is being written: at the end of epoch 0, the best checkpoint is the first and last.ckpt the
second). Run from the repository root, so `tests` imports."""

from __future__ import annotations

import os
import signal
from typing import Any

from lightning.pytorch.callbacks import Callback
from typing_extensions import override


class KillAt(Callback):
    """Send this process `signal` (a name: SIGKILL, SIGTERM) after training step `step` (the global
    step, counted from 1) or inside the `save`-th checkpoint save (after its contents are gathered,
    before its file is written)."""

    def __init__(self, signal: str = "SIGKILL", step: int | None = None, save: int | None = None) -> None:
        self.signal, self.step, self.save, self.saves = signal, step, save, 0

    def _kill(self) -> None:
        os.kill(os.getpid(), getattr(signal, self.signal))

    @override
    def on_train_batch_end(self, trainer: Any, *args: Any) -> None:
        if trainer.global_step == self.step:
            self._kill()

    @override
    def on_save_checkpoint(self, trainer: Any, pl_module: Any, checkpoint: dict[str, Any]) -> None:
        self.saves += 1
        if self.saves == self.save:
            self._kill()
