"""Sets each process's intra-op thread count (the `threads` knob, recipes.runtime.threads) when the fit
starts: only then are the strategy's local processes, the data module's loader workers and the net known."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from torch.utils.flop_counter import FlopCounterMode
from typing_extensions import override

from recipes.runtime.threads import available_cpus, choose_threads, user_omp_threads

__all__ = ["ThreadCount", "forward_flops"]


def forward_flops(module: pl.LightningModule, batch_size: int) -> float | None:
    """FLOPs of one forward of the shipped net on a batch of `batch_size` (one sample's, times the
    batch), in eval mode and without gradients so that nothing (BatchNorm statistics) changes; None
    for a module without the Task contract's net and example input."""
    net, example = getattr(module, "shipped_net", None), getattr(module, "example_input", None)
    if net is None or example is None:
        return None
    training = net.training
    try:
        net.eval()
        inputs = example(1)  # as Lightning's example_input_array: a tuple is positional, a dict keywords
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            if isinstance(inputs, dict):
                net(**inputs)
            else:
                net(*inputs) if isinstance(inputs, tuple) else net(inputs)
    finally:
        net.train(training)
    return float(counter.get_total_flops()) * batch_size


class ThreadCount(Callback):
    """`torch.set_num_threads` on every rank, before the first step; rank 0 prints the count and why."""

    def __init__(self, threads: int | str = "auto") -> None:
        self.threads = threads
        self.count: int | None = None  # set in the processes that fit (not the main one of strategy=async)

    def choose(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> tuple[int, str]:
        """(threads per process, why) for this trainer's local processes, data and net."""
        datamodule: Any = trainer.datamodule
        workers = datamodule.loader_workers() if hasattr(datamodule, "loader_workers") else 0
        batch_size = getattr(datamodule, "batch_size", 1)
        return choose_threads(
            self.threads,
            available_cpus(),
            local_processes=getattr(trainer.strategy, "num_processes", 1),
            loader_workers=workers,
            flops_per_batch=forward_flops(pl_module, batch_size) if self.threads == "auto" else None,
            user_omp=user_omp_threads(),
        )

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self.count, reason = self.choose(trainer, pl_module)
        torch.set_num_threads(self.count)
        if trainer.is_global_zero:
            print(f"threads: {self.count} per process ({reason})", flush=True)
