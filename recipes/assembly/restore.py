"""A run rebuilt from its checkpoint alone (recipes.evaluate, recipes.export, `Task.load_from_checkpoint`):
the saved config, trusted targets only, the recorded structure replayed, the weights loaded strictly."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from hydra.utils import get_object
from omegaconf import DictConfig, OmegaConf

from modules.task import Task
from recipes.assembly.data_record import check_vocabulary
from recipes.assembly.signatures import parameter_names
from recipes.assembly.tasks import DataShape, build_datamodule, build_module, build_sized_task, check_net_fits
from recipes.assembly.thread_count import use_threads
from recipes.checkpointing.format import KEY, load_checkpoint, load_weights
from recipes.checkpointing.trust import saved_config
from recipes.errors import RecipeError

__all__ = ["BUILT_GROUPS", "apply_overrides", "load_task", "rebuild"]

# The groups of a saved config that a rebuild instantiates: an override may only set their parameters.
BUILT_GROUPS = ("data", "model", "task")


def _leaves(overrides: dict[str, Any], prefix: str = "") -> Iterable[tuple[str, Any]]:
    """(dotted key, value) of every leaf of `overrides`, whose keys may themselves be dotted."""
    for key, value in overrides.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            yield from _leaves(value, f"{path}.")
        else:
            yield path, value


def _check_key(cfg: DictConfig, key: str, value: Any, choices: dict[str, Any]) -> None:
    """An override of a built group that names a key its node's class does not take is refused in the
    checkpoint's own terms (its group choice and keys), not in the constructor's (whose class may be
    a base class the user never named)."""
    parts = key.split(".")
    if parts[0] not in BUILT_GROUPS:
        return
    node: Any = cfg
    for depth, name in enumerate(parts):
        if not isinstance(node, DictConfig):
            return
        if name in node:
            node = node[name]
            continue
        if "_target_" not in node or name in parameter_names(get_object(node._target_)):  # saved, trusted
            return
        group, where = parts[0], ".".join(parts[:depth])
        which = f"{group}={choices[group]}" if group in choices else node._target_
        keys = sorted(str(k) for k in node if not str(k).startswith("_"))
        raise RecipeError(
            f"overrides.{key}={value}: this checkpoint's {where} ({which}) has no {name}; its keys: {', '.join(keys)}"
        )


def apply_overrides(cfg: DictConfig, overrides: dict[str, Any] | None, choices: dict[str, Any]) -> None:
    """`overrides` (dotted keys; nested mappings merge into the saved ones) into a checkpoint's saved config."""
    leaves = dict(_leaves(overrides or {}))
    retargeted = {key.rpartition(".")[0] for key in leaves if key.endswith("._target_")}  # checked when built
    for key, value in leaves.items():
        if key.rpartition(".")[0] not in retargeted:
            _check_key(cfg, key, value, choices)
    for key, value in (overrides or {}).items():
        OmegaConf.update(cfg, key, value, merge=True)


def rebuild(
    ckpt_path: str, overrides: dict[str, Any] | None = None, trusted: Iterable[str] = ()
) -> tuple[DictConfig, Any, Task, dict[str, Any]]:
    """Config, datamodule and weight-loaded module of a checkpoint, and its group choices (what
    recipes.evaluate, export, attack and generate start from), with this process's thread count set by
    the saved `threads` rule; `overrides` patch the saved config; `trusted`: targets beyond the shipped
    ones it may build."""
    ckpt = load_checkpoint(ckpt_path)
    cfg = saved_config(ckpt, "ckpt_path", ckpt_path, trusted)
    apply_overrides(cfg, overrides, ckpt[KEY].get("choices", {}))
    check_net_fits(ckpt, cfg, DataShape.recorded(ckpt[KEY]["data"]), ckpt_path, "ckpt_path")
    datamodule = build_datamodule(cfg)
    check_vocabulary(ckpt[KEY]["data"], datamodule, "ckpt_path", ckpt_path)
    module = load_weights(ckpt, build_module(cfg, datamodule, trusted), ckpt_path)
    count, reason = use_threads(cfg.get("threads", "auto"), module, datamodule)  # the training run's rule
    print(f"threads: {count} ({reason})", flush=True)
    return cfg, datamodule, module, ckpt[KEY].get("choices", {})


def load_task(ckpt_path: str, overrides: dict[str, Any] | None = None, trusted: Iterable[str] = ()) -> Task:
    """The weight-loaded task of a checkpoint without its data (`Task.load_from_checkpoint`): the same
    trusted config, structure replay and strict weights_only load as `rebuild`, the net sized by the
    data shape the checkpoint recorded."""
    ckpt = load_checkpoint(ckpt_path)
    cfg = saved_config(ckpt, "ckpt_path", ckpt_path, trusted)
    apply_overrides(cfg, overrides, ckpt[KEY].get("choices", {}))
    shape = DataShape.recorded(ckpt[KEY]["data"])
    check_net_fits(ckpt, cfg, shape, ckpt_path, "ckpt_path")
    module = build_sized_task(cfg, shape, trusted)
    return load_weights(ckpt, module, ckpt_path)
