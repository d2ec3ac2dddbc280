"""The RNG states a checkpoint carries (recipes.checkpointing.format: rng_states, set_rng_states) come
back through torch.save / torch.load(weights_only=True) and restore every generator a step draws from.
CUDA's states are saved and restored only where CUDA is present; here the CPU side is checked, and that
a checkpoint written on a GPU machine (with a `cuda` entry) restores on this one. The GPU side is in
tests/gpu/test_gpu_resume.py."""

from __future__ import annotations

import io
import random
from typing import Any

import numpy as np
import pytest
import torch

from recipes.checkpointing.format import rng_states, set_rng_states


def draws() -> tuple[Any, ...]:
    return torch.rand(4), random.random(), np.random.rand(4).tolist()


def saved_and_loaded(states: dict[str, Any]) -> dict[str, Any]:
    """`states` as a resumed run reads them: written by torch.save, read back with weights_only=True."""
    buffer = io.BytesIO()
    torch.save({"rng": states}, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)["rng"]


def test_the_states_round_trip_through_a_checkpoint() -> None:
    torch.manual_seed(3), random.seed(3), np.random.seed(3)
    states = saved_and_loaded(rng_states())
    expected = draws()
    torch.manual_seed(99), random.seed(99), np.random.seed(99)
    set_rng_states(states)
    after = draws()
    assert torch.equal(after[0], expected[0]) and after[1:] == expected[1:]


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU: tests/gpu covers it")
def test_without_cuda_no_cuda_state_is_saved_and_a_gpu_checkpoints_cuda_states_are_ignored() -> None:
    states = rng_states()
    assert set(states) == {"torch", "python", "numpy"}
    expected = draws()
    # as a 2-GPU machine writes them: one CUDA generator state per device
    from_gpu = saved_and_loaded({**states, "cuda": [torch.zeros(16, dtype=torch.uint8)] * 2})
    set_rng_states(from_gpu)
    after = draws()
    assert torch.equal(after[0], expected[0]) and after[1:] == expected[1:]
