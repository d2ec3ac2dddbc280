"""A run's data module and task: the net sized by the data (or by the shape a checkpoint recorded),
wrapped in the task's LightningModule, with the frozen reference nets its `<name>_ckpt` keys name."""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import lightning.pytorch as pl
import torch
from omegaconf import DictConfig, open_dict
from torch import nn

from modules.task import Task
from recipes.assembly.acceleration import model_options, to_channels_last
from recipes.assembly.data_record import data_record
from recipes.assembly.instantiation import instantiate_part
from recipes.checkpointing.format import KEY, load_checkpoint, load_weights, restore_structure
from recipes.checkpointing.trust import saved_config
from recipes.data.contract import RecipeData
from recipes.errors import RecipeError

__all__ = [
    "FREE_WEIGHTS",
    "DataShape",
    "build_datamodule",
    "build_module",
    "build_sized_task",
    "build_task",
    "check_net_fits",
    "check_optimizer",
    "reference_net",
]


def build_datamodule(cfg: DictConfig) -> RecipeData:
    """The run's data module, checked against the data contract (recipes.data.contract.RecipeData)
    before a net is sized from it."""
    datamodule = instantiate_part(cfg.data, "data")
    if not isinstance(datamodule, RecipeData):
        missing = [
            name
            for name in ("input_shape", "num_classes", "return_index", "training_dataset", "pixel_normalization")
            if not hasattr(datamodule, name)
        ]
        raise RecipeError(
            f"data._target_={cfg.data.get('_target_')} is not a recipes data module (it lacks "
            f"{', '.join(missing)}): see recipes.data.contract.RecipeData, or derive it from "
            f"recipes.data.base.ImageDataModule"
        )
    return datamodule


def reference_net(path: str, key: str, shape: DataShape | tuple[int, ...], trusted: Iterable[str] = ()) -> nn.Module:
    """The frozen shipped net of a recipes checkpoint (a teacher, a source model, a fine-tuning start,
    a feature classifier), rebuilt with its task from the config saved in it (only trusted targets:
    recipes.checkpointing.trust), for data of `shape` (a bare input shape: any vocabulary). Its own
    reference models are not needed for its net, so they are not loaded."""
    ckpt = load_checkpoint(path, key)
    entry = ckpt[KEY]
    saved = saved_config(ckpt, key, path, trusted)
    input_shape = shape.input_shape if isinstance(shape, DataShape) else tuple(shape)
    if tuple(entry["data"]["input_shape"]) != tuple(input_shape):
        fix = "data.seq_len" if len(input_shape) == 1 else "data.image_size / data.channels"
        raise RecipeError(
            f"{key}={path} was trained on inputs {tuple(entry['data']['input_shape'])} but the data gives "
            f"{tuple(input_shape)}: set {fix} to match"
        )
    theirs = DataShape.recorded(entry["data"]).vocab
    if isinstance(shape, DataShape) and theirs is not None and shape.vocab != theirs:
        raise RecipeError(
            f"{key}={path}'s vocabulary ({len(theirs)} symbols) is not this data's "
            f"({len(shape.vocab or ())} symbols): pass data.vocab_from={path} to read the text with it"
        )
    check_net_fits(ckpt, saved, DataShape.recorded(entry["data"]), path, key)
    module = build_task(saved, DataShape.recorded(entry["data"]), references={})
    return load_weights(ckpt, module, path, key).shipped_net.eval().requires_grad_(False)


@dataclass(frozen=True)
class DataShape:
    """What a net is sized by (a data module's, or the one a checkpoint recorded)."""

    input_shape: tuple[int, ...]
    num_classes: int
    vocab: tuple[str, ...] | None = None  # text: the symbols in index order (recipes.assembly.data_record)

    @classmethod
    def of(cls, datamodule: Any) -> DataShape:
        record = data_record(datamodule)
        return cls(tuple(datamodule.input_shape), datamodule.num_classes, recorded_vocab(record))

    @classmethod
    def recorded(cls, data: dict[str, Any]) -> DataShape:
        """The shape a checkpoint's `recipe.data` entry records."""
        return cls(tuple(data["input_shape"]), data["num_classes"], recorded_vocab(data))


def recorded_vocab(data: dict[str, Any]) -> tuple[str, ...] | None:
    vocab = data.get("vocab")
    return None if vocab is None else tuple(vocab)


# Weights a saved model config may always ask for, whatever the file stores (a task may build its own
# net beside the model node's and store only that): 16 M, 64 MB in float32.
FREE_WEIGHTS = 1 << 24


def check_net_fits(ckpt: dict[str, Any], cfg: DictConfig, shape: DataShape, path: str, key: str) -> None:
    """Before a loader builds a checkpoint's net for real: build it on the meta device (no memory) and
    replay the recorded structure, so a saved model config that asks for more weights than the file
    stores (and more than FREE_WEIGHTS) is refused in one line instead of allocating them. Shapes are
    checked exactly once the net is built (`checkpoint.check_compatible`)."""
    model, _ = model_options(cfg.model)
    with torch.device("meta"):
        net = instantiate_part(model, "model", input_shape=list(shape.input_shape), num_classes=shape.num_classes)
        restore_structure(ckpt, net, path, key)
    asked = sum(t.numel() for t in net.state_dict().values())
    stored = sum(t.numel() for t in ckpt["state_dict"].values() if isinstance(t, torch.Tensor))
    if asked > max(stored, FREE_WEIGHTS):
        raise RecipeError(
            f"{key}={path}: its saved model config builds a net of {asked:,} weights, more than the {stored:,} "
            f"stored with it; it was not written by recipes.train"
        )


def build_task(cfg: DictConfig, shape: DataShape, references: dict[str, nn.Module | None]) -> Task:
    """The net sized by `shape`, wrapped in the task's LightningModule; `references` are the
    reference nets of the task's `<name>_ckpt` keys (a key absent from it is passed as None)."""
    model, options = model_options(cfg.model)
    net = instantiate_part(model, "model", input_shape=list(shape.input_shape), num_classes=shape.num_classes)
    if options["channels_last"]:
        to_channels_last(net)
    ckpt_keys = [str(k) for k in cfg.task if str(k).endswith("_ckpt")]
    task = copy.copy(cfg.task)  # shallow: keeps interpolations to the root config working
    with open_dict(task):
        for k in ckpt_keys:
            del task[k]
    arguments = {k[: -len("_ckpt")]: references.get(k[: -len("_ckpt")]) for k in ckpt_keys}
    module = instantiate_part(task, "task", net=net, **arguments)
    if not isinstance(module, Task):
        raise RecipeError(f"task._target_={cfg.task._target_} is not a modules.task.Task: derive the module from it")
    return module


def build_module(cfg: DictConfig, datamodule: Any, trusted: Iterable[str] = ()) -> Task:
    """The task module of a run, its net sized by the data.

    Task keys named `<name>_ckpt` (teacher_ckpt, source_ckpt, init_ckpt) are checkpoint paths: each
    becomes the argument `<name>`, the checkpoint's shipped net rebuilt and frozen (None when unset).
    `trusted`: targets beyond the shipped ones that those checkpoints may build; the caller's own
    setting, never read from `cfg`, which may itself come from a checkpoint.
    """
    module = build_sized_task(cfg, DataShape.of(datamodule), trusted)
    if getattr(module, "needs_sample_index", False):
        datamodule.return_index = True
    return module


def build_sized_task(cfg: DictConfig, shape: DataShape, trusted: Iterable[str] = ()) -> Task:
    """build_module's task for a data shape, no data module needed: the reference nets loaded from the
    task's `<name>_ckpt` paths, the optimizer checked."""
    references = {
        str(k)[: -len("_ckpt")]: reference_net(cfg.task[k], f"task.{k}", shape, trusted)
        for k in cfg.task
        if str(k).endswith("_ckpt") and cfg.task[k]
    }
    module = build_task(cfg, shape, references)
    check_optimizer(module)
    return module


def check_optimizer(module: pl.LightningModule) -> None:
    """Build the optimizer once now, so a bad learning rate fails at start-up and not mid-run."""
    try:
        built = module.configure_optimizers()
    except (ValueError, TypeError) as err:
        raise RecipeError(f"task.optimizer / task.scheduler: {err}; e.g. task.optimizer.lr=0.001") from None
    optimizer = built["optimizer"] if isinstance(built, dict) else built
    for group in getattr(optimizer, "param_groups", []):
        lr = float(group.get("lr", 1.0))
        if not (math.isfinite(lr) and lr > 0):  # inf passes `> 0` and diverges at the first step
            raise RecipeError(f"task.optimizer.lr={lr} must be a finite positive number, e.g. task.optimizer.lr=0.001")
