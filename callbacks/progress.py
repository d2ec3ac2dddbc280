"""Lightning's RichProgressBar without its two costs: the wait at every stop and the work every batch.

Lightning 2.6's bar redraws from a thread that sleeps `1 / refresh_rate` seconds between redraws
with `time.sleep`, and stopping the bar (end of every fit, validation, test and `fast_dev_run`) joins
that thread, so each stop waits out the rest of a sleep: up to a second at `refresh_rate=1`. Here the
stop tells the thread to finish under the display's lock and does not join it: the thread ends on
its own at its next wake-up, and draws nothing more, because it only redraws when the main thread
asked for it and the request is withdrawn under the same lock.

Every training batch, Lightning's bar also updates its task and gathers the progress-bar metrics
(which turns each logged tensor into a Python number: a device sync on a GPU), though at most
`refresh_rate` redraws a second show any of it. Here a batch updates the bar only when a redraw is
due, and the last batch of an epoch always does.
"""

from __future__ import annotations

import time
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import RichProgressBar
from typing_extensions import override

__all__ = ["PromptRichProgressBar"]


class PromptRichProgressBar(RichProgressBar):
    """RichProgressBar whose stop costs nothing and whose batches update it only when it redraws;
    `refresh_rate` is redraws per second (Lightning's unit)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._next_update = 0.0  # time.monotonic() at which a training batch next updates the bar

    @override
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        now = time.monotonic()
        if self.refresh_rate <= 0 or now >= self._next_update or batch_idx + 1 >= self.total_train_batches:
            self._next_update = now + 1 / max(self.refresh_rate, 1e-9)
            super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)

    @override
    def _stop_progress(self) -> None:
        if self.progress is not None:
            live = self.progress.live
            thread = live._refresh_thread
            if thread is not None:
                with live._lock:  # the thread redraws under this lock: after it, it will not redraw again
                    thread.done.set()
                    thread.refresh_cond = False
                live._refresh_thread = None  # Progress.stop would join it (waiting out its sleep)
        super()._stop_progress()
