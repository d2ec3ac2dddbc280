"""The test stage, shared by recipes.train and recipes.evaluate: the shipped weights tested on one
device, logged to the run's loggers."""

from __future__ import annotations

import csv
import os
from typing import Any

from lightning.pytorch.loggers import CSVLogger, Logger
from omegaconf import DictConfig

from modules.task import Task
from recipes.assembly.training import build_test_trainer
from recipes.checkpointing.format import load_checkpoint, load_weights
from recipes.data.contract import DomainData

__all__ = ["adopt_csv_header", "score", "score_shipped"]


def score(
    cfg: DictConfig, module: Task, datamodule: Any, loggers: list[Logger] | tuple = (), step: int = 0
) -> dict[str, float]:
    """The test metrics of `module` on one device: shared by recipes.train and recipes.evaluate.

    A data module of two domains (recipes.data.contract.DomainData) is also tested on each domain's test set,
    reported as `test/<metric>_<domain>`; plain `test/<metric>` is the training domain's.
    """
    inference = not module.evaluates_with_gradients
    trainer = build_test_trainer(cfg, inference)
    metrics = {
        name: float(value) for name, value in trainer.test(module, datamodule=datamodule, verbose=False)[0].items()
    }
    for domain in datamodule.test_domains if isinstance(datamodule, DomainData) else ():
        loader = datamodule.domain_test_dataloader(domain)
        for name, value in (
            build_test_trainer(cfg, inference).test(module, dataloaders=loader, verbose=False)[0].items()
        ):
            metrics[f"{name}_{domain}"] = float(value)
    for logger in loggers:
        adopt_csv_header(logger)
        logger.log_metrics(metrics, step=step)
        logger.save()
    return metrics


def score_shipped(
    cfg: DictConfig,
    module: Task,
    datamodule: Any,
    shipped: str | None,
    loggers: list[Logger] | tuple = (),
    step: int = 0,
) -> dict[str, float]:
    """Load the shipped checkpoint (when there is one) into `module` and test it."""
    if shipped:
        load_weights(load_checkpoint(shipped), module, shipped)
    return score(cfg, module, datamodule, loggers, step)


def adopt_csv_header(logger: Logger) -> None:
    """A CSVLogger in a process that did not write its metrics.csv (the main process after a spawned
    fit) knows none of the file's columns and would fail to append: give it the file's header."""
    if not isinstance(logger, CSVLogger) or not os.path.isfile(logger.experiment.metrics_file_path):
        return
    with open(logger.experiment.metrics_file_path, newline="") as file:
        header = next(csv.reader(file), [])
    known = logger.experiment.metrics_keys
    logger.experiment.metrics_keys = sorted(set(known) | set(header))
