"""Test-only callback: a fault at a chosen moment of a real run, to show what a resume makes of it.

Added from the command line, e.g. `+callbacks.kill._target_=tests.helpers.kill_at.KillAt +callbacks.kill.step=25`
(a signal after that training step) or `+callbacks.kill.save=2` (SIGKILL half-way through writing the
run's second checkpoint file: at the end of epoch 0 the best checkpoint is the first, last.ckpt the
second). Run from the repository root, so `tests` imports."""

from __future__ import annotations

import io
import os
import signal
from typing import Any

import torch
from lightning.pytorch.callbacks import Callback
from typing_extensions import override


class KillAt(Callback):
    """Send this process `signal` (a name: SIGKILL, SIGTERM) after training step `step` (the global
    step, counted from 1), or SIGKILL it once half of the `save`-th checkpoint file is written."""

    def __init__(self, signal: str = "SIGKILL", step: int | None = None, save: int | None = None) -> None:
        self.signal, self.step, self.save, self.saves = signal, step, save, 0

    @override
    def on_train_batch_end(self, trainer: Any, *args: Any) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), getattr(signal, self.signal))

    @override
    def on_save_checkpoint(self, trainer: Any, pl_module: Any, checkpoint: dict[str, Any]) -> None:
        # Called while the checkpoint's contents are gathered; the checkpoint IO writes them next.
        self.saves += 1
        if self.saves == self.save:
            torch.save = _die_half_way(torch.save)


def _die_half_way(save: Any) -> Any:
    def dying(obj: Any, file: Any, *args: Any, **kwargs: Any) -> None:
        data = io.BytesIO()
        save(obj, data, *args, **kwargs)
        file.write(data.getvalue()[: len(data.getvalue()) // 2])
        file.flush()
        os.kill(os.getpid(), signal.SIGKILL)

    return dying
