"""Test-only callback: after every optimizer step, each rank records its replica (parameters, then
floating buffers, flattened) and, at the end of fit, saves them to `<out_dir>/rank<R>.pt`, with the
parameters at that moment (`final_params`: under strategy=async, after the last average across nodes).

Added to a run with `+callbacks.probe._target_=tests.helpers.replica_probe.ReplicaProbe
+callbacks.probe.out_dir=DIR` (the test's subprocess runs from the repo root)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch

from recipes.strategies.model_avg import floating_buffers


class ReplicaProbe(pl.Callback):
    def __init__(self, out_dir: str, last_only: bool = False) -> None:
        self.out_dir = Path(out_dir)
        self.last_only = last_only  # keep only the latest step (for nets whose shapes change mid-fit)
        self.params: list[torch.Tensor] = []
        self.buffers: list[torch.Tensor] = []
        self.steps: list[int] = []

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self.last_only:
            self.steps, self.params, self.buffers = [], [], []
        self.steps.append(trainer.global_step)
        self.params.append(torch.cat([p.detach().flatten() for p in pl_module.net.parameters()]).cpu())
        self.buffers.append(torch.cat([torch.zeros(0), *(b.flatten().cpu() for b in floating_buffers(pl_module.net))]))

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        net = pl_module.net
        buffer_ids = {id(b) for b in floating_buffers(net)}
        final = torch.cat([p.detach().flatten() for p in net.parameters()]).cpu()
        torch.save(
            {
                "steps": self.steps,
                "params": torch.stack(self.params),
                "buffers": torch.stack(self.buffers),
                "final_params": final,
                "param_names": [f"net.{n}" for n, _ in net.named_parameters()],
                "buffer_names": [f"net.{n}" for n, b in net.named_buffers() if id(b) in buffer_ids],
            },
            self.out_dir / f"rank{trainer.global_rank}.pt",
        )
