"""SIGTERM (a scheduler's stop, a pre-emption) ends a run with exit status 143, SLURM's convention,
and one line that says how to resume, instead of Lightning's silent exit 0.

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

from recipes.errors import EXIT_SIGTERM, RunStopped


class SigtermStop(Callback):
    """Notes SIGTERM during training (no collective in the handler) and stops at the next batch end."""

    def __init__(self) -> None:
        self.received = False

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # After Lightning registered its handlers (trainer._run); its teardown restores the originals.
        def note(signum: int, frame: FrameType | None) -> None:
            if not self.received and trainer.strategy.launcher is not None:
                trainer.strategy.launcher.kill(signum)  # the DDP children this process started, if any
            self.received = True

        signal.signal(signal.SIGTERM, note)

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


def sigterm_noted(trainer: pl.Trainer) -> bool:
    """Whether this process got SIGTERM during the fit (SigtermStop's note, or Lightning's own)."""
    return trainer.received_sigterm or any(isinstance(c, SigtermStop) and c.received for c in trainer.callbacks)


def stopped(event: str, exit_code: int = 1) -> RunStopped:
    """RunStopped for a run stopped mid-way by `event`, with the command that resumes it from its last.ckpt
    (or runs it again when no epoch had finished); it names the launch's run dir (a prerequisite trains in
    a subdir of it). Outside a Hydra run (a Trainer fitted directly) the event alone."""
    if not HydraConfig.initialized():
        return RunStopped(event, exit_code)
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    resume = (run_dir / "checkpoints" / "last.ckpt").is_file()
    how = "resume with: " if resume else "no epoch had finished, so there is no checkpoint; run again with: "
    return RunStopped(f"{event}; {how}{rerun_command(run_dir, resume)}", exit_code)


def stopped_by_sigterm(epoch: int) -> RunStopped:
    """The one line and exit 143 of a run stopped by SIGTERM during epoch `epoch`."""
    return stopped(f"stopped by SIGTERM at epoch {epoch}", EXIT_SIGTERM)


@contextmanager
def stop_on_sigterm(trainer: pl.Trainer) -> Iterator[None]:
    """Around trainer.fit: a stop by SIGTERM becomes RunStopped(exit 143) with the resume command."""
    try:
        yield
    except BaseException as err:
        if not (isinstance(err, SIGTERMException) or sigterm_noted(trainer)):
            raise
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()  # a peer still in a collective fails now, not at timeout
        raise stopped_by_sigterm(trainer.current_epoch) from None
