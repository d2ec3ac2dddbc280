"""`python -m recipes.evaluate ckpt_path=PATH`: rebuild data and module from the checkpoint's saved
config and print its test metrics, the same numbers recipes.train reported at the end of training."""

from __future__ import annotations

import csv
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import hydra
import lightning.pytorch as pl
from lightning.pytorch.loggers import CSVLogger, Logger
from omegaconf import DictConfig, OmegaConf

from callbacks.export import ExportError, export_and_verify
from recipes import cli
from recipes.build import build_datamodule, build_module, build_test_trainer
from recipes.checkpoint import KEY, check_compatible, fold_masks, load_checkpoint, restore_structure
from recipes.errors import RecipeError
from recipes.results import print_summary, strict_json
from recipes.trusted import saved_config


def test_metrics(cfg: DictConfig, module: pl.LightningModule, datamodule: Any,
                 loggers: list[Logger] | tuple = (), step: int = 0) -> dict[str, float]:
    """Test metrics of `module` on one device: shared by recipes.train and recipes.evaluate.

    A data module with `test_domains` (old and new domain) is also tested on each domain's test set,
    reported as `test/<metric>_<domain>`; plain `test/<metric>` is the training domain's.
    """
    trainer = build_test_trainer(cfg)
    metrics = {name: float(value) for name, value in trainer.test(module, datamodule=datamodule, verbose=False)[0].items()}
    for domain in getattr(datamodule, "test_domains", ()):
        loader = datamodule.domain_test_dataloader(domain)
        for name, value in build_test_trainer(cfg).test(module, dataloaders=loader, verbose=False)[0].items():
            metrics[f"{name}_{domain}"] = float(value)
    for logger in loggers:
        adopt_csv_header(logger)
        logger.log_metrics(metrics, step=step)
        logger.save()
    return metrics


def adopt_csv_header(logger: Logger) -> None:
    """A CSVLogger in a process that did not write its metrics.csv (the main process after a spawned
    fit) knows none of the file's columns and would fail to append: give it the file's header."""
    if not isinstance(logger, CSVLogger) or not os.path.isfile(logger.experiment.metrics_file_path):
        return
    with open(logger.experiment.metrics_file_path, newline="") as file:
        header = next(csv.reader(file), [])
    known = logger.experiment.metrics_keys
    logger.experiment.metrics_keys = sorted(set(known) | set(header))


def export_best(export_cfg: DictConfig, net: Any, datamodule: Any, out_dir: Path) -> dict[str, Any]:
    """Export `net` as `export_cfg` says and verify it on the test set; a failure is a RecipeError."""
    try:
        return export_and_verify(net, datamodule.test_dataloader(), out_dir, **OmegaConf.to_container(export_cfg))
    except ExportError as err:
        raise RecipeError(str(err)) from None


def rebuild(ckpt_path: str, overrides: dict[str, Any] | None = None, trusted: Iterable[str] = ()
            ) -> tuple[DictConfig, Any, pl.LightningModule, dict[str, Any]]:
    """Config, datamodule and weight-loaded module of a checkpoint, and its group choices;
    `overrides` patch the saved config; `trusted`: targets beyond the shipped ones it may build."""
    ckpt = load_checkpoint(ckpt_path)
    cfg = saved_config(ckpt, "ckpt_path", ckpt_path, trusted)
    for key, value in (overrides or {}).items():  # dotted keys; nested mappings merge into the saved ones
        OmegaConf.update(cfg, key, value, merge=True)
    datamodule = build_datamodule(cfg)
    module = build_module(cfg, datamodule, trusted)
    restore_structure(ckpt, module.net)
    check_compatible(ckpt, module, ckpt_path)
    module.load_state_dict(fold_masks(ckpt["state_dict"]))
    return cfg, datamodule, module, ckpt[KEY].get("choices", {})


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    overrides = OmegaConf.to_container(cfg.overrides, resolve=True) if cfg.overrides else {}
    saved_cfg, datamodule, module, choices = rebuild(cfg.ckpt_path, overrides, cfg.trusted_targets)
    metrics = test_metrics(saved_cfg, module, datamodule)
    report = {"recipe": choices.get("recipe"), "task": choices.get("task"), "checkpoint": str(cfg.ckpt_path),
              "metrics": metrics}
    print_summary(report, title="evaluate")
    print(strict_json(metrics))
    if cfg.out:
        Path(cfg.out).write_text(strict_json(report, indent=2) + "\n")
    return report


@hydra.main(version_base="1.3", config_path="pkg://conf", config_name="evaluate")
def _hydra_main(cfg: DictConfig) -> None:
    cli.guarded(evaluate, cfg)


def main() -> None:
    cli.run_main(_hydra_main)


if __name__ == "__main__":
    main()
