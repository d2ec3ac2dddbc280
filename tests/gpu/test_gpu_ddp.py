"""trainer=ddp on every GPU of this machine (one process per GPU, NCCL): the ranks train one model
together and it learns."""

from __future__ import annotations

from pathlib import Path

import torch

from tests.helpers.gpu import needs_cuda, needs_gpus, ran_on_the_gpu
from tests.helpers.runs import train_ok

pytestmark = [*needs_cuda, needs_gpus(2)]


def test_ddp_trains_on_every_gpu(run_dir: Path) -> None:
    results = train_ok(run_dir, "trainer=ddp", "logger=csv", "trainer.max_epochs=3", timeout=600)
    parallel = results["parallel"]
    assert parallel["world_size"] == torch.cuda.device_count() and parallel["strategy"] == "DDPStrategy", parallel
    assert results["metrics"]["test/acc"] > 0.5, results["metrics"]
    assert ran_on_the_gpu(run_dir)
