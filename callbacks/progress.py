"""Lightning's RichProgressBar without the wait at every stop.

Lightning 2.6's bar redraws from a thread that sleeps `1 / refresh_rate` seconds between redraws
with `time.sleep`, and stopping the bar (end of every fit, validation, test and `fast_dev_run`) joins
that thread, so each stop waits out the rest of a sleep: up to a second at `refresh_rate=1`. Here the
stop tells the thread to finish under the display's lock and does not join it: the thread ends on
its own at its next wake-up, and draws nothing more, because it only redraws when the main thread
asked for it and the request is withdrawn under the same lock.
"""

from __future__ import annotations

from lightning.pytorch.callbacks import RichProgressBar
from typing_extensions import override


class PromptRichProgressBar(RichProgressBar):
    """RichProgressBar whose stop costs nothing; `refresh_rate` is redraws per second (Lightning's unit)."""

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
