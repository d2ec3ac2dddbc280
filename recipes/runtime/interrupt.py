"""SIGTERM (a scheduler's stop, a pre-emption) ends a run with exit status 143, SLURM's convention,
and one line that says how to resume, instead of Lightning's silent exit 0. SIGINT (Ctrl-C) ends it
alike, with exit status 130 (128 + SIGINT, what a shell reports for a command stopped by Ctrl-C),
instead of Lightning's silent exit 1; a second Ctrl-C (a batch stuck in a collective) interrupts at once
and still ends with the same line, and once the stop is under way Ctrl-C is ignored, as Lightning does.

Lightning's own SIGTERM handler (trainer/connectors/signal_connector.py) makes the loops raise
SIGTERMException, a SystemExit with status 0, and runs a DDP broadcast inside the signal handler,
which pairs with whatever collective the other ranks are in and leaves them training on, or
failing later with "Connection closed by peer". SigtermStop replaces it for the training loop with
a handler that only notes the signal and forwards it to the DDP children Lightning started; every
rank then stops at its next batch end, and a rank that fails in a collective because a peer has
already stopped counts as stopped by the same signal.

The resume point is checkpoints/last.ckpt from the last epoch end (conf/callbacks: last_checkpoint):
it resumes exactly, where a checkpoint taken mid-epoch would not (Lightning cannot restart a plain
dataloader mid-epoch and warns that the results are unreliable), so no checkpoint is written here;
the unfinished epoch is trained again on resume.
"""

from __future__ import annotations

import shlex
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Any

import lightning.pytorch as pl
import torch
from hydra.core.hydra_config import HydraConfig
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities.exceptions import SIGTERMException
from typing_extensions import override

from recipes.errors import EXIT_SIGINT, EXIT_SIGTERM, RunStopped

__all__ = [
    "SECOND_CTRL_C_S",
    "STOP_SIGNALS",
    "SigtermStop",
    "how_to_go_on",
    "rerun_command",
    "sigterm_noted",
    "stop_on_sigterm",
    "stopped",
    "stopped_by",
    "stopped_by_sigterm",
]

STOP_SIGNALS = {signal.SIGTERM: EXIT_SIGTERM, signal.SIGINT: EXIT_SIGINT}  # the signals that stop a run, and its exit
# A SIGINT this long after the first is a second Ctrl-C; one sooner is the same press reaching a DDP child
# twice (from the terminal, to the whole process group, and forwarded by rank 0).
SECOND_CTRL_C_S = 1.0


class SigtermStop(Callback):
    """Notes SIGTERM or SIGINT during training (no collective in the handler) and stops at the next
    batch end; `signum` is the first signal noted."""

    def __init__(self) -> None:
        self.received = False
        self.signum = signal.SIGTERM
        self.noted_at = 0.0

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # After Lightning registered its handlers (trainer._run); its teardown restores the originals.
        def note(signum: int, frame: FrameType | None) -> None:
            if self.received and signum == signal.SIGINT and time.monotonic() - self.noted_at >= SECOND_CTRL_C_S:
                raise KeyboardInterrupt  # a second Ctrl-C: Lightning's interrupt path, now
            if not self.received:
                self.signum, self.noted_at = signal.Signals(signum), time.monotonic()
                if trainer.strategy.launcher is not None:
                    trainer.strategy.launcher.kill(signum)  # the DDP children this process started, if any
            self.received = True

        for signum in STOP_SIGNALS:
            signal.signal(signum, note)

    @override
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self.received:
            raise SIGTERMException


def rerun_command(run_dir: Path, resume: bool) -> str:
    """This run's command line in `run_dir`, resuming from its last.ckpt when `resume`."""
    keep = [o for o in HydraConfig.get().overrides.task if not o.startswith(("hydra.run.dir=", "ckpt_path="))]
    extra = [f"hydra.run.dir={run_dir}", *(["ckpt_path=last"] if resume else [])]
    return shlex.join(["python", "-m", "recipes.train", *keep, *extra])


def how_to_go_on(before: str = "") -> str:
    """The end of a stopped run's line: `before` (what to fix first, if anything) and the command that
    resumes it from the launch's run dir (a prerequisite trains in a subdir of it), or runs it again
    when no epoch had finished."""
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    resume = (run_dir / "checkpoints" / "last.ckpt").is_file()
    then = f"{before}, then " if before else ""
    if resume:
        return f"{then}resume with: {rerun_command(run_dir, resume)}"
    return f"no epoch had finished, so there is no checkpoint; {then}run again with: {rerun_command(run_dir, resume)}"


def stopped_by(err: BaseException, trainer: pl.Trainer) -> signal.Signals | None:
    """The signal that stopped the fit, or None when `err` is another failure. Lightning turns a
    KeyboardInterrupt (Ctrl-C outside the training loop, or a second one) into sys.exit(1)."""
    noted = [c.signum for c in trainer.callbacks if isinstance(c, SigtermStop) and c.received]
    if noted:
        return noted[0]
    if isinstance(err, KeyboardInterrupt) or (
        isinstance(err, SystemExit) and isinstance(err.__context__, KeyboardInterrupt)
    ):
        return signal.SIGINT
    if isinstance(err, SIGTERMException) or trainer.received_sigterm:
        return signal.SIGTERM
    return None


def sigterm_noted(trainer: pl.Trainer) -> bool:
    """Whether this process got a stop signal during the fit (SigtermStop's note, or Lightning's own)."""
    return trainer.received_sigterm or any(isinstance(c, SigtermStop) and c.received for c in trainer.callbacks)


def stopped(event: str, exit_code: int = 1) -> RunStopped:
    """RunStopped for a run stopped mid-way by `event`, with how to go on (how_to_go_on); outside a
    Hydra run (a Trainer fitted directly) the event alone."""
    if not HydraConfig.initialized():
        return RunStopped(event, exit_code)
    return RunStopped(f"{event}; {how_to_go_on()}", exit_code)


def stopped_by_sigterm(epoch: int) -> RunStopped:
    """The one line and exit 143 of a run stopped by SIGTERM during epoch `epoch`."""
    return stopped(f"stopped by SIGTERM at epoch {epoch}", EXIT_SIGTERM)


@contextmanager
def stop_on_sigterm(trainer: pl.Trainer) -> Iterator[None]:
    """Around trainer.fit: a stop by SIGTERM (or SIGINT) becomes RunStopped(exit 143, or 130) with the
    resume command, which names the launch's run dir (a prerequisite trains in a subdir of it)."""
    try:
        yield
    except BaseException as err:
        signum = stopped_by(err, trainer)
        if signum is None:
            raise
        if signum == signal.SIGINT and threading.current_thread() is threading.main_thread():
            signal.signal(
                signal.SIGINT, signal.SIG_IGN
            )  # the line and the exit follow: another Ctrl-C would cut them off
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()  # a peer still in a collective fails now, not at timeout
        raise stopped(f"stopped by {signum.name} at epoch {trainer.current_epoch}", STOP_SIGNALS[signum]) from None
