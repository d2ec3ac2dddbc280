"""What the GPU suite (tests/gpu/, `python -m pytest -m gpu`) shares: the marks that make a test part of
it and skip it, with the reason, where the machine lacks what it needs; and what a GPU run is checked by.
The probes never fail without CUDA: a GPU-less machine collects the suite and skips it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from omegaconf import OmegaConf

__all__ = [
    "GPU",
    "NO_CUDA",
    "needs_bf16",
    "needs_cuda",
    "needs_gpus",
    "ran_on_the_gpu",
    "run_config",
    "skip_without_cuda",
]

NO_CUDA = "CUDA is not available"
# trainer=gpu without a progress bar, and no CSV/TensorBoard loggers to wait on (the suite reads results.json)
GPU = ["trainer=gpu", "logger=csv"]


def _cuda() -> bool:
    return torch.cuda.is_available()


skip_without_cuda = pytest.mark.skipif(not _cuda(), reason=NO_CUDA)
# A module's `pytestmark`: part of `-m gpu`, skipped where CUDA is absent (the default run deselects it);
# a single test takes the two marks as decorators: @pytest.mark.gpu @skip_without_cuda.
needs_cuda = [pytest.mark.gpu, skip_without_cuda]


def needs_bf16() -> pytest.MarkDecorator:
    """Skip on a GPU without bfloat16 (before Ampere); on a GPU-less machine needs_cuda's reason stands."""
    lacking = _cuda() and not torch.cuda.is_bf16_supported()
    return pytest.mark.skipif(lacking, reason="this GPU does not support bfloat16 (torch.cuda.is_bf16_supported())")


def needs_gpus(count: int) -> pytest.MarkDecorator:
    """Skip where fewer than `count` GPUs are visible; on a GPU-less machine needs_cuda's reason stands."""
    lacking = _cuda() and torch.cuda.device_count() < count
    return pytest.mark.skipif(lacking, reason=f"needs {count} GPUs; {torch.cuda.device_count()} visible")


def run_config(run_dir: Path) -> Any:
    """The config the run used, as Hydra saved it in its run dir."""
    return OmegaConf.load(run_dir / ".hydra" / "config.yaml")


def ran_on_the_gpu(run_dir: Path) -> bool:
    """Lightning's device line in the run's train.log (the last one: a resumed run appends) says it
    trained on CUDA."""
    lines = [line for line in (run_dir / "train.log").read_text().splitlines() if "GPU available:" in line]
    return bool(lines) and lines[-1].rstrip().endswith("GPU available: True (cuda), used: True")
