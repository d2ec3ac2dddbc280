"""Turn a composed config into the parts Lightning runs: datamodule, module, callbacks, loggers,
strategy and trainer. Every part is type-checked before it is built, and a constructor's complaint
about a value becomes a one-line RecipeError naming the config key."""

from __future__ import annotations

import copy
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import Logger
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from omegaconf import DictConfig, OmegaConf, open_dict
from torch import nn

from callbacks.plan import check_plan
from callbacks.report import model_size
from callbacks.step import CompressionStep
from modules.task import Task
from recipes.acceleration import CompileNet, model_options, to_channels_last
from recipes.checkpoint import (
    KEY,
    RecipeState,
    load_checkpoint,
    load_weights,
    resolve_ckpt_path,
    restore_structure,
)
from recipes.divergence import DivergenceGuard
from recipes.errors import RecipeError
from recipes.interrupt import SigtermStop
from recipes.loggers import continue_history
from recipes.prerequisites import prerequisite_config
from recipes.resume_paths import ResumePathGuard
from recipes.startup import check_strategy, pending_prerequisites
from recipes.trusted import saved_config
from recipes.validate import check_node


def instantiate_part(node: DictConfig, key: str, **kwargs: Any) -> Any:
    """`hydra.utils.instantiate` with type checks first and constructor errors reported by key."""
    check_node(node, key)
    try:
        return instantiate(node, **kwargs)
    except InstantiationException as err:
        cause = err.__cause__
        if isinstance(cause, RecipeError):
            raise cause from None
        if isinstance(cause, (ValueError, TypeError, MisconfigurationException)):  # a value the class refuses
            raise RecipeError(keyed_message(str(cause), key, str(err))) from None
        raise


def keyed_message(message: str, key: str, hydra_message: str) -> str:
    """A constructor's complaint named by its config key. Constructors name their own keys from the
    group root (`data.batch_size=0 ...`); one built as a nested node (`data.target`, in Hydra's
    `full_key:` line) gets its real path (`data.target.batch_size=0 ...`)."""
    found = re.search(r"full_key: (\S+)\s*$", hydra_message)
    full_key = found.group(1) if found else key
    if message.startswith(f"{key}."):
        return full_key + message[len(key) :] if full_key.startswith(f"{key}.") else message
    return f"{full_key}: {message}"


def build_datamodule(cfg: DictConfig) -> pl.LightningDataModule:
    return instantiate_part(cfg.data, "data")


def reference_net(path: str, key: str, input_shape: tuple[int, ...], trusted: Iterable[str] = ()) -> nn.Module:
    """The frozen shipped net of a recipes checkpoint (a teacher, a source model, a fine-tuning start,
    a feature classifier), rebuilt with its task from the config saved in it (only trusted targets:
    recipes.trusted). Its own reference models are not needed for its net, so they are not loaded."""
    ckpt = load_checkpoint(path, key)
    entry = ckpt[KEY]
    saved = saved_config(ckpt, key, path, trusted)
    if tuple(entry["data"]["input_shape"]) != tuple(input_shape):
        raise RecipeError(
            f"{key}={path} was trained on inputs {tuple(entry['data']['input_shape'])} but the data gives "
            f"{tuple(input_shape)}: set data.image_size / data.channels to match"
        )
    check_net_fits(ckpt, saved, DataShape(**entry["data"]), path, key)
    module = build_task(saved, DataShape(**entry["data"]), references={})
    return load_weights(ckpt, module, path, key).shipped_net.eval().requires_grad_(False)


@dataclass(frozen=True)
class DataShape:
    """What a net is sized by (a data module's, or the one a checkpoint recorded)."""

    input_shape: tuple[int, ...]
    num_classes: int

    @classmethod
    def of(cls, datamodule: Any) -> DataShape:
        return cls(tuple(datamodule.input_shape), datamodule.num_classes)


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
        str(k)[: -len("_ckpt")]: reference_net(cfg.task[k], f"task.{k}", shape.input_shape, trusted)
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


def build_callbacks(cfg: DictConfig) -> list[Callback]:
    return [instantiate_part(node, f"callbacks.{name}") for name, node in cfg.get("callbacks", {}).items() if node]


def build_compression(cfg: DictConfig, net: nn.Module) -> dict[str, CompressionStep]:
    """The compression callbacks, in the order of `compress=[...]`, checked as a plan against the net
    and the epoch budget (order, combination, schedules, sizes) before anything trains."""
    steps = {name: instantiate_part(node, f"compress.{name}") for name, node in (cfg.get("compress") or {}).items()}
    try:
        check_plan(steps, net, cfg.trainer.max_epochs)
    except ValueError as err:
        raise RecipeError(str(err)) from None
    return steps


def build_loggers(cfg: DictConfig) -> list[Logger]:
    return [instantiate_part(node, f"logger.{name}") for name, node in cfg.get("logger", {}).items() if node]


def build_strategy(cfg: DictConfig) -> Any:
    """A Strategy instance for `_target_` configs, else the name Lightning resolves (e.g. 'auto')."""
    if "_target_" in cfg.strategy:
        return instantiate_part(cfg.strategy, "strategy")
    return cfg.strategy.get("name", "auto")


def build_trainer(cfg: DictConfig, callbacks: list[Callback], loggers: list[Logger]) -> pl.Trainer:
    return instantiate_part(
        cfg.trainer, "trainer", callbacks=callbacks, logger=loggers or False, strategy=build_strategy(cfg)
    )


def build_test_trainer(cfg: DictConfig, inference_mode: bool = True) -> pl.Trainer:
    """One device, whatever the training strategy: a DistributedSampler would pad the test set
    with duplicates, and the same trainer in recipes.evaluate reproduces the numbers exactly.
    `inference_mode=False` for test steps that need input gradients (attacks, Task.evaluates_with_gradients)."""
    trainer_cfg = cfg.trainer
    return pl.Trainer(
        inference_mode=inference_mode,
        accelerator=trainer_cfg.accelerator,
        devices=1,
        num_nodes=1,
        strategy="auto",
        precision=trainer_cfg.precision,
        deterministic=trainer_cfg.deterministic,
        logger=False,
        callbacks=[],
        enable_checkpointing=False,
        enable_model_summary=False,
        enable_progress_bar=False,
        limit_test_batches=trainer_cfg.get("limit_test_batches") or (1 if trainer_cfg.get("fast_dev_run") else None),
        default_root_dir=cfg.paths.run_dir if "paths" in cfg else None,
    )


@dataclass
class Parts:
    """Everything `trainer.fit` needs, built from one config."""

    datamodule: pl.LightningDataModule
    module: Task
    compression: dict[str, CompressionStep] = field(default_factory=dict)
    callbacks: list[Callback] = field(default_factory=list)
    loggers: list[Logger] = field(default_factory=list)
    trainer: pl.Trainer | None = None
    dense_size: dict[str, int] = field(default_factory=dict)  # the net as built, before any compression
    ckpt_path: str | None = None  # the checkpoint the fit resumes from


def build_training(cfg: DictConfig, choices: dict[str, Any], ckpt_path: str | None = None) -> Parts:
    """All parts of a training run; its checkpoints carry what rebuilds them (RecipeState).
    `ckpt_path`: a checkpoint to resume from, loaded into the module now (so a misfit fails here,
    before the loggers touch the run's metrics); `trainer.fit` then restores the rest of its state."""
    check_strategy(cfg, choices)  # before anything is built
    datamodule = build_datamodule(cfg)
    module = build_module(cfg, datamodule, cfg.get("trusted_targets") or ())
    data = {"input_shape": list(datamodule.input_shape), "num_classes": datamodule.num_classes}
    compression = build_compression(cfg, module.shipped_net)
    dense_size = model_size(module.shipped_net)
    resumed = load_checkpoint(ckpt_path) if ckpt_path else None
    if resumed is not None:
        load_weights(resumed, module, ckpt_path)
    resolved = plain_config(cfg)
    callbacks = [
        *build_callbacks(cfg),
        *compression.values(),
        RecipeState(resolved, choices, data),
        ResumePathGuard(),
        DivergenceGuard(),
        SigtermStop(),
    ]
    if model_options(cfg.model)[1]["compile"]:
        callbacks.append(CompileNet())
    loggers = build_loggers(cfg)
    trainer = build_trainer(cfg, callbacks, loggers)
    if cfg.trainer.get("fast_dev_run"):
        # Lightning swaps the trainer's loggers for a no-op one: the recipe's own writes skip them too
        # (a smoke test neither imports TensorBoard nor writes hyperparameters or event files).
        loggers = []
    for logger in loggers:
        logger.log_hyperparams(resolved)
    continue_history(loggers, resumed)  # start-up passed: metrics.csv may change
    return Parts(datamodule, module, compression, callbacks, loggers, trainer, dense_size, ckpt_path)


def build_run(cfg: DictConfig, choices: dict[str, Any]) -> Parts:
    """The build stage of recipes.train: seed, then every part, resuming from `cfg.ckpt_path`."""
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    return build_training(cfg, choices, resolve_ckpt_path(cfg.ckpt_path, Path(cfg.paths.run_dir)))


def check_build_plan(cfg: DictConfig) -> None:
    """Build the run's task now (data, model, task, compression plan), with untrained stand-ins of the
    same shape for the reference nets that prerequisites would train, when a prerequisite would
    otherwise train before the run's own build finds a value wrong: a value only the data can judge
    (e.g. task.conditional=true on data with one class) or a compression plan that does not fit the
    shipped net. Without a pending prerequisite the run's own build comes first and refuses them."""
    pending = pending_prerequisites(cfg)
    if not pending:
        return
    run_dir = Path(cfg.paths.run_dir)
    stand_ins = {}
    for name in pending:
        sub = prerequisite_config(cfg, name, run_dir / name)
        stand_ins[name] = build_task(sub, DataShape.of(build_datamodule(sub)), references={}).shipped_net
    module = build_task(cfg, DataShape.of(build_datamodule(cfg)), stand_ins)
    build_compression(cfg, module.shipped_net)


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


def plain_config(cfg: DictConfig) -> dict[str, Any]:
    """The resolved config as plain data (what a checkpoint stores to rebuild its module)."""
    return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]
