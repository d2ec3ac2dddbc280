"""A run rebuilt from its checkpoint alone (recipes.evaluate, recipes.export, `Task.load_from_checkpoint`):
the saved config, trusted targets only, the recorded structure replayed, the weights loaded strictly."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from omegaconf import DictConfig, OmegaConf

from modules.task import Task
from recipes.assembly.tasks import DataShape, build_datamodule, build_module, build_sized_task, check_net_fits
from recipes.checkpointing.format import KEY, load_checkpoint, load_weights
from recipes.checkpointing.trust import saved_config

__all__ = ["load_task", "rebuild"]


def rebuild(
    ckpt_path: str, overrides: dict[str, Any] | None = None, trusted: Iterable[str] = ()
) -> tuple[DictConfig, Any, Task, dict[str, Any]]:
    """Config, datamodule and weight-loaded module of a checkpoint, and its group choices (what
    recipes.evaluate and recipes.export start from); `overrides` patch the saved config; `trusted`:
    targets beyond the shipped ones it may build."""
    ckpt = load_checkpoint(ckpt_path)
    cfg = saved_config(ckpt, "ckpt_path", ckpt_path, trusted)
    for key, value in (overrides or {}).items():  # dotted keys; nested mappings merge into the saved ones
        OmegaConf.update(cfg, key, value, merge=True)
    check_net_fits(ckpt, cfg, DataShape(**ckpt[KEY]["data"]), ckpt_path, "ckpt_path")
    datamodule = build_datamodule(cfg)
    module = load_weights(ckpt, build_module(cfg, datamodule, trusted), ckpt_path)
    return cfg, datamodule, module, ckpt[KEY].get("choices", {})


def load_task(ckpt_path: str, overrides: dict[str, Any] | None = None, trusted: Iterable[str] = ()) -> Task:
    """The weight-loaded task of a checkpoint without its data (`Task.load_from_checkpoint`): the same
    trusted config, structure replay and strict weights_only load as `rebuild`, the net sized by the
    data shape the checkpoint recorded."""
    ckpt = load_checkpoint(ckpt_path)
    cfg = saved_config(ckpt, "ckpt_path", ckpt_path, trusted)
    for key, value in (overrides or {}).items():
        OmegaConf.update(cfg, key, value, merge=True)
    data = ckpt[KEY]["data"]
    check_net_fits(ckpt, cfg, DataShape(tuple(data["input_shape"]), data["num_classes"]), ckpt_path, "ckpt_path")
    module = build_sized_task(cfg, DataShape(tuple(data["input_shape"]), data["num_classes"]), trusted)
    return load_weights(ckpt, module, ckpt_path)
