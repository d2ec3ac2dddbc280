"""The libraries set up for a recipe run: their advertising, repeats and inapplicable warnings silenced,
its log lines sent to train.log too, and its NVML-based CUDA check dropped where there is no GPU.

Lightning sets PYTORCH_NVML_BASED_CUDA_CHECK=1 when imported, so that asking whether CUDA is
available never initializes CUDA in a process that may fork later. Without a GPU that question is
asked through NVML every time, and torch's Adam and AdamW ask it at every optimizer step (their
CUDA-graph capture check): each step then tries to load and initialize NVML again. A machine with
no GPU has nothing a fork could spoil, so there the setting is dropped and the answer is the CUDA
runtime's, which is cheap."""

from __future__ import annotations

import logging
import os
import warnings

__all__ = ["VARIABLE", "drop_nvml_check_without_gpus", "log_libraries_to_file", "quiet_libraries"]

VARIABLE = "PYTORCH_NVML_BASED_CUDA_CHECK"


def drop_nvml_check_without_gpus() -> None:
    """Drop Lightning's NVML-based CUDA check where there is no GPU (asked once, through NVML)."""
    import torch  # here: recipes.runtime.guard, which calls this, stays light to import

    if os.environ.get(VARIABLE) == "1" and torch.cuda.device_count() == 0:
        del os.environ[VARIABLE]


class _DropNoise(logging.Filter):
    """Library log lines nobody can act on in a recipe run (NOISE). Lightning's device lines (GPU
    available...) are worth one look, not one per Trainer: a run builds one to train and one per test;
    a line the run already showed is dropped (quiet_libraries starts each run afresh)."""

    DEVICES = ("GPU available", "TPU available", "HPU available")
    NOISE = (
        "💡 Tip",  # Lightning's advertising
        "Experiment with name",  # MLflow's experiment, created on a recipe's first run in a store
        "Joblib.Parallel(",  # hydra/launcher=joblib's settings, at every batch of a sweep
    )

    def __init__(self) -> None:
        super().__init__()
        self.shown: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        line = str(record.msg)
        if line.startswith(self.DEVICES):
            seen = line in self.shown
            self.shown.add(line)
            return not seen
        return not line.startswith(self.NOISE)


_FILTER = _DropNoise()  # one for the process: addFilter adds an instance once


def quiet_libraries() -> None:
    """Silence the libraries' advertising, repeats and warnings that do not apply to recipe runs."""
    _FILTER.shown.clear()  # a run (a sweep's trial too) shows its device lines once, in its own train.log
    for name in (
        "lightning.pytorch.utilities.rank_zero",
        "lightning.fabric.utilities.rank_zero",
        "lightning.pytorch.loggers.mlflow",
        "hydra_plugins.hydra_joblib_launcher._core",
    ):
        logging.getLogger(name).addFilter(_FILTER)
    # mlflow (logger=mlflow) imports setuptools' pkg_resources, deprecated: a matter for its maintainers
    warnings.filterwarnings("ignore", message=r"pkg_resources is deprecated", category=UserWarning)
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")
    # Steps are counted across epochs, so train/loss is logged even when an epoch is shorter than
    # log_every_n_steps (digits: 20 batches); Lightning's warning about that is misleading here.
    warnings.filterwarnings("ignore", message=r".*smaller than the logging interval.*")
    # torch.export traces nn.LSTM's forward, which refreshes its `_flat_weights` list (the cuDNN/oneDNN
    # weight view) as it runs; torch warns that the attribute was assigned during export, about torch's own
    # module. The exported program is checked against the net on test data, so the warning says nothing.
    warnings.filterwarnings("ignore", message=r".*_flat_weights.*were assigned during export.*")


def log_libraries_to_file() -> None:
    """Hydra's job logging sends the root logger to <run dir>/train.log, but Lightning's loggers keep
    their own console handler and do not propagate (Lightning imported before Hydra set up logging):
    give them the root's file handlers too, so train.log holds the run's log lines, console unchanged."""
    files = [h for h in logging.getLogger().handlers if isinstance(h, logging.FileHandler)]
    for name in ("lightning.pytorch", "lightning.fabric"):
        logger = logging.getLogger(name)
        for handler in files:
            if not logger.propagate and handler not in logger.handlers:
                logger.addHandler(handler)
