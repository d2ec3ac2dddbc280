"""The fit stage of recipes.train: `trainer.fit` with SIGTERM, lost-peer and failed-checkpoint-write
handling, the parallel section of results.json, and the choice of the checkpoint the run ships."""

from __future__ import annotations

import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch

from recipes.assembly.training import Parts
from recipes.checkpointing.files import CheckpointWriteError
from recipes.errors import RunStopped
from recipes.runtime.interrupt import how_to_go_on, stop_on_sigterm
from recipes.stages.results import parallel_results
from recipes.strategies.timeout import collective_failure

__all__ = ["Fitted", "best_checkpoint", "best_score", "fit", "resuming", "shipped_checkpoint"]


@dataclass
class Fitted:
    """What the fit leaves for the later stages (rank 0 only)."""

    seconds: float
    parallel: dict[str, Any]
    shipped: str | None  # the checkpoint the run ships and tests; None: the module as the fit left it
    monitor: dict[str, Any] = field(default_factory=dict)  # the task's best-checkpoint metric and its best value


def best_checkpoint(trainer: pl.Trainer) -> str | None:
    """The best checkpoint the run wrote (by the task's monitored metric), else last.ckpt, else None."""
    callback = trainer.checkpoint_callback
    if callback is None:
        return None
    return getattr(callback, "best_model_path", "") or getattr(callback, "last_model_path", "") or None


@contextmanager
def resuming(ckpt_path: str | None) -> Iterator[None]:
    """A resumed fit writes into the checkpoint dir it resumes from on purpose: ModelCheckpoint's warning
    that the dir "exists and is not empty" (meant for a new run on top of an old one) is dropped."""
    with warnings.catch_warnings():
        if ckpt_path:
            warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not empty")
        yield


def fit(parts: Parts, run_dir: Path, keep_weights: bool = False) -> Fitted | None:
    """Fit; on rank 0 return what the later stages need, on other ranks None.

    keep_weights: write checkpoints/last.ckpt even when no checkpoint callback ran (fast_dev_run),
    for a model that a later run of the recipe starts from."""
    trainer, module = parts.trainer, parts.module
    start = time.perf_counter()
    with stop_on_sigterm(trainer), resuming(parts.ckpt_path):
        try:
            trainer.fit(module, datamodule=parts.datamodule, ckpt_path=parts.ckpt_path, weights_only=True)
        except CheckpointWriteError as err:  # a full disk, a read-only folder: one line, exit 1, run dir kept
            raise RunStopped(f"{err}: {how_to_go_on(err.remedy)}") from err
        except Exception as err:
            stalled = collective_failure(err, trainer.strategy)  # a lost peer: one line, run dir kept
            if stalled is None:
                raise
            raise RunStopped(stalled) from None
    seconds = time.perf_counter() - start
    parallel = parallel_results(trainer, parts.datamodule.batch_size, seconds)
    if keep_weights and not best_checkpoint(trainer):
        trainer.save_checkpoint(run_dir / "checkpoints" / "last.ckpt")
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        # Testing runs on rank 0 alone: leave the group so metrics do not wait for other ranks
        # (a later fit in the same process, e.g. after a prerequisite, initializes it again).
        torch.distributed.destroy_process_group()
    if not trainer.is_global_zero:
        return None
    return Fitted(seconds, parallel, shipped_checkpoint(parts, run_dir, keep_weights), best_score(trainer))


def shipped_checkpoint(parts: Parts, run_dir: Path, keep_weights: bool) -> str | None:
    """The best by the task's monitored metric, except that a compressed run ships its final net (an
    earlier "best" epoch would be an uncompressed one)."""
    last = run_dir / "checkpoints" / "last.ckpt"
    use_last = bool(parts.compression) or (keep_weights and not best_checkpoint(parts.trainer))
    return str(last) if use_last and last.is_file() else best_checkpoint(parts.trainer)


def best_score(trainer: pl.Trainer) -> dict[str, Any]:
    """results.json's `monitor` section: the metric that picked the best checkpoint (the task's
    `monitor`, via conf/callbacks), its mode and the best value seen; empty when nothing was scored."""
    callback = trainer.checkpoint_callback
    score = getattr(callback, "best_model_score", None)
    if score is None:
        return {}
    return {"metric": callback.monitor, "mode": callback.mode, "best": float(score)}
