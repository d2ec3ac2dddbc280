"""The parts Lightning runs for a training run: callbacks, the compression plan, loggers, strategy and
trainer, with the data module and task (recipes.assembly.tasks); every part type-checked before it is built."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import Logger
from omegaconf import DictConfig
from torch import nn

from callbacks.formats.size_report import model_size
from callbacks.plan import check_compression_plan
from callbacks.step import CompressionStep
from modules.task import Task
from recipes.assembly.acceleration import CompileNet, model_options
from recipes.assembly.data_record import check_vocabulary, data_record
from recipes.assembly.divergence import DivergenceGuard
from recipes.assembly.instantiation import instantiate_part, plain_config
from recipes.assembly.loggers import continue_history
from recipes.assembly.tasks import build_datamodule, build_module
from recipes.assembly.thread_count import ThreadCount
from recipes.checkpointing.format import KEY, RecipeState, load_checkpoint, load_weights, resolve_ckpt_path
from recipes.checkpointing.resume_paths import ResumePathGuard
from recipes.errors import RecipeError
from recipes.runtime.interrupt import SigtermStop

__all__ = [
    "Parts",
    "build_callbacks",
    "build_compression",
    "build_loggers",
    "build_run",
    "build_strategy",
    "build_test_trainer",
    "build_trainer",
    "build_training",
]


def build_callbacks(cfg: DictConfig) -> list[Callback]:
    return [instantiate_part(node, f"callbacks.{name}") for name, node in cfg.get("callbacks", {}).items() if node]


def build_compression(cfg: DictConfig, net: nn.Module) -> dict[str, CompressionStep]:
    """The compression callbacks, in the order of `compress=[...]`, checked as a plan against the net
    and the epoch budget (order, combination, schedules, sizes) before anything trains."""
    steps = {name: instantiate_part(node, f"compress.{name}") for name, node in (cfg.get("compress") or {}).items()}
    try:
        check_compression_plan(steps, net, cfg.trainer.max_epochs)
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


def build_training(
    cfg: DictConfig,
    choices: dict[str, Any],
    ckpt_path: str | None = None,
    datamodule: pl.LightningDataModule | None = None,
) -> Parts:
    """All parts of a training run; its checkpoints carry what rebuilds them (RecipeState). The plan was
    checked before (recipes.assembly.startup_checks.check_startup, the strategy's declarations included).
    `ckpt_path`: a checkpoint to resume from, loaded into the module now (so a misfit fails here,
    before the loggers touch the run's metrics); `trainer.fit` then restores the rest of its state.
    `datamodule`: the run's data module when the start-up checks built it already (check_buildable)."""
    datamodule = datamodule if datamodule is not None else build_datamodule(cfg)
    module = build_module(cfg, datamodule, cfg.get("trusted_targets") or ())
    data = data_record(datamodule)
    compression = build_compression(cfg, module.shipped_net)
    dense_size = model_size(module.shipped_net)
    resumed = load_checkpoint(ckpt_path) if ckpt_path else None
    if resumed is not None:
        check_vocabulary(resumed[KEY]["data"], datamodule, "ckpt_path", str(ckpt_path))
        load_weights(resumed, module, ckpt_path)
    resolved = plain_config(cfg)
    callbacks = [
        ThreadCount(cfg.get("threads", "auto")),  # first: the thread count holds for every other hook
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


def build_run(cfg: DictConfig, choices: dict[str, Any], datamodule: pl.LightningDataModule | None = None) -> Parts:
    """The build stage of recipes.train: seed, then every part, resuming from `cfg.ckpt_path`."""
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    return build_training(cfg, choices, resolve_ckpt_path(cfg.ckpt_path, Path(cfg.paths.run_dir)), datamodule)
