"""Lightning sets PYTORCH_NVML_BASED_CUDA_CHECK=1 when imported, so that asking whether CUDA is
available never initializes CUDA in a process that may fork later. Without a GPU that question is
asked through NVML every time, and torch's Adam and AdamW ask it at every optimizer step (their
CUDA-graph capture check): each step then tries to load and initialize NVML again. A machine with
no GPU has nothing a fork could spoil, so there the setting is dropped and the answer is the CUDA
runtime's, which is cheap."""

from __future__ import annotations

import os

VARIABLE = "PYTORCH_NVML_BASED_CUDA_CHECK"


def drop_nvml_check_without_gpus() -> None:
    """Drop Lightning's NVML-based CUDA check where there is no GPU (asked once, through NVML)."""
    import torch  # here: recipes.cli, which calls this, stays light to import

    if os.environ.get(VARIABLE) == "1" and torch.cuda.device_count() == 0:
        del os.environ[VARIABLE]
