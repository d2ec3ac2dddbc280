"""Sets each process's intra-op thread count (the `threads` knob, recipes.runtime.threads) when the fit
starts: only then are the strategy's local processes, the data module's loader workers and the net known."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from typing_extensions import override

from modules.nets import net_flops
from recipes.errors import RecipeError
from recipes.runtime.threads import available_cpus, choose_threads, user_omp_threads

__all__ = ["ThreadCount", "check_threads", "forward_flops", "thread_choice", "use_threads"]


def check_threads(threads: Any) -> None:
    """`threads`: auto or a positive count (torch.set_num_threads would take 0 or a negative and fail)."""
    if threads != "auto" and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise RecipeError(f"threads={threads} must be auto or a positive integer, e.g. threads=auto or threads=4")


def forward_flops(module: pl.LightningModule, batch_size: int) -> float | None:
    """FLOPs of one forward of the shipped net on a batch of `batch_size` (one sample's, times the
    batch: modules.nets.net_flops); None for a module without the Task contract's net and example input."""
    net, example = getattr(module, "shipped_net", None), getattr(module, "example_input", None)
    if net is None or example is None:
        return None
    return float(net_flops(net, example(1))) * batch_size  # as Lightning's example_input_array


def thread_choice(
    threads: int | str, module: pl.LightningModule, datamodule: Any, local_processes: int = 1
) -> tuple[int, str]:
    """(threads per process, why) by the `threads` rule (recipes.runtime.threads) for `module` fed by
    `datamodule` in one of `local_processes` processes."""
    workers = datamodule.loader_workers() if hasattr(datamodule, "loader_workers") else 0
    return choose_threads(
        threads,
        available_cpus(),
        local_processes=local_processes,
        loader_workers=workers,
        flops_per_batch=forward_flops(module, getattr(datamodule, "batch_size", 1)) if threads == "auto" else None,
        user_omp=user_omp_threads(),
    )


def use_threads(threads: int | str, module: pl.LightningModule, datamodule: Any) -> tuple[int, str]:
    """`torch.set_num_threads` by `thread_choice` for one process (recipes.evaluate, export, attack and
    generate run one); returns (threads, why)."""
    check_threads(threads)
    count, reason = thread_choice(threads, module, datamodule)
    torch.set_num_threads(count)
    return count, reason


class ThreadCount(Callback):
    """`torch.set_num_threads` on every rank, before the first step; rank 0 prints the count and why."""

    def __init__(self, threads: int | str = "auto") -> None:
        self.threads = threads
        self.count: int | None = None  # set in the processes that fit (not the main one of strategy=async)

    def choose(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> tuple[int, str]:
        """(threads per process, why) for this trainer's local processes, data and net."""
        processes = getattr(trainer.strategy, "num_processes", 1)
        return thread_choice(self.threads, pl_module, trainer.datamodule, processes)

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self.count, reason = self.choose(trainer, pl_module)
        torch.set_num_threads(self.count)
        if trainer.is_global_zero:
            print(f"threads: {self.count} per process ({reason})", flush=True)
