"""Test-only callback: each rank writes its intra-op thread count when training starts, to
`<out_dir>/rank<R>.txt`. Added with `+callbacks.threads_probe._target_=tests.helpers.thread_probe.ThreadProbe
+callbacks.threads_probe.out_dir=DIR`."""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import torch
from typing_extensions import override

__all__ = ["ThreadProbe"]


class ThreadProbe(pl.Callback):
    def __init__(self, out_dir: str) -> None:
        self.out_dir = Path(out_dir)

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        (self.out_dir / f"rank{trainer.global_rank}.txt").write_text(str(torch.get_num_threads()))
