"""Resume on the GPU: a run stopped early and resumed with `ckpt_path=last` goes on to the end of its
budget, from a checkpoint written on the GPU or on the CPU, and the checkpoint carries the CUDA RNG
states, which a resume restores (recipes.checkpointing.format; the CPU side: tests/recipes/checkpointing/
test_rng_states.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from recipes.checkpointing.format import rng_states, set_rng_states
from tests.helpers.gpu import GPU, needs_cuda, ran_on_the_gpu
from tests.helpers.runs import train_ok

pytestmark = needs_cuda

EPOCHS = "trainer.max_epochs=3"
STOP = "trainer.max_steps=40"  # digits: 20 batches of 64 per epoch, so the first run ends after epoch 1
TRAINERS = {"gpu": GPU, "cpu": ["trainer=cpu", "logger=csv"]}


def last(run_dir: Path) -> dict:
    return torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)


@pytest.mark.parametrize("first, then", [("gpu", "gpu"), ("cpu", "gpu"), ("gpu", "cpu")])
def test_a_stopped_run_resumes_to_the_end_of_its_budget(first: str, then: str, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    train_ok(run_dir, *TRAINERS[first], EPOCHS, STOP)
    stopped = last(run_dir)
    assert (stopped["epoch"], stopped["global_step"]) == (1, 40)
    # every CUDA device's generator state is saved where CUDA is present, whichever accelerator trained
    assert len(stopped["recipe"]["rng"]["cuda"]) == torch.cuda.device_count()
    resumed = train_ok(run_dir, *TRAINERS[then], EPOCHS, "ckpt_path=last")
    end = last(run_dir)
    assert (end["epoch"], end["global_step"]) == (2, 60)  # the third epoch, not three more
    assert resumed["metrics"]["test/acc"] > 0.5, resumed["metrics"]
    assert ran_on_the_gpu(run_dir) == (then == "gpu")


def test_the_cuda_rng_states_round_trip() -> None:
    torch.cuda.manual_seed_all(5)
    states = rng_states()
    expected = torch.rand(4, device="cuda")
    torch.cuda.manual_seed_all(99)
    set_rng_states(states)
    assert torch.equal(torch.rand(4, device="cuda"), expected)
    # a checkpoint saved without CUDA leaves the CUDA generators as they are
    without_cuda = {k: v for k, v in rng_states().items() if k != "cuda"}
    torch.cuda.manual_seed_all(7)
    expected = torch.rand(4, device="cuda")
    torch.cuda.manual_seed_all(7)
    set_rng_states(without_cuda)
    assert torch.equal(torch.rand(4, device="cuda"), expected)
