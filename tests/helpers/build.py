"""Build in this process what a run would build, for tests that look at the parts instead of a whole run:
the composed config, a quiet Trainer, a checkpoint of an untrained module."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from hydra import compose, initialize_config_module
from hydra.core.hydra_config import HydraConfig
from omegaconf import open_dict

__all__ = ["GENOTYPE", "compose_train", "quiet_trainer", "write_untrained_checkpoint"]

# A DARTS genotype of two nodes (what a search derives), for the tests that build model=darts
GENOTYPE = (
    "normal:sep_conv_3x3@0+skip@1/dil_conv_3x3@2+sep_conv_5x5@0|reduce:max_pool_3x3@0+skip@1/skip@2+avg_pool_3x3@1"
)


def quiet_trainer(**kwargs: Any) -> Any:
    """A one-process CPU Trainer with no logger, checkpoints, progress bar or model summary, for tests
    that fit a module directly; keyword arguments add to or override these."""
    import lightning.pytorch as pl

    quiet = {
        "accelerator": "cpu",
        "devices": 1,
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
    }
    return pl.Trainer(**{**quiet, **kwargs})


def compose_train(tmp_path: Path, *overrides: str):
    """The config `python -m recipes.train OVERRIDES` would run with (run dir pinned to tmp_path)."""
    from recipes.runtime.resolvers import register_resolvers

    register_resolvers()
    with initialize_config_module(config_module="conf", version_base="1.3"):
        cfg = compose("train", overrides=[f"paths.run_dir={tmp_path}", *overrides], return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]  # as in a real run, where the task function never sees the hydra node
    return cfg


def write_untrained_checkpoint(path: Path, choices: dict[str, str], *overrides: str) -> str:
    """A recipes checkpoint of the untrained module that `overrides` compose (digits data), written as
    recipes.train writes one; `choices` are the config groups it records."""
    from recipes.assembly.instantiation import plain_config
    from recipes.assembly.tasks import build_datamodule, build_module

    cfg = compose_train(path.parent, *overrides)
    module = build_module(cfg, build_datamodule(cfg))
    recipe = {"config": plain_config(cfg), "choices": choices, "data": {"input_shape": [1, 8, 8], "num_classes": 10}}
    torch.save({"state_dict": module.state_dict(), "recipe": recipe}, path)
    return str(path)
