"""`python -m recipes.train [overrides]`: compose -> build -> fit -> test the best checkpoint ->
results.json -> summary. The console script `recipes-train` is the same command."""

from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import Any

import hydra
import lightning.pytorch as pl
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from callbacks.report import compression_report, layer_table, write_report
from recipes import cli
from recipes.build import Parts, build_training
from recipes.checkpoint import (check_compatible, fold_masks, load_checkpoint, resolve_ckpt_path,
                                restore_structure)
from recipes.errors import RecipeError, RunStopped
from recipes.evaluate import export_best, test_metrics
from recipes.interrupt import stop_on_sigterm
from recipes.loggers import continue_history
from recipes.prerequisites import ensure_prerequisites
from recipes.results import parallel_results, print_summary, relative, write_results
from recipes.startup import check_plan
from recipes.strategies.timeout import collective_failure


def check_launch(cfg: DictConfig) -> None:
    """A strategy that re-runs this script per rank cannot live inside a Hydra multirun (srun, torchrun
    and submitit start every rank themselves, so Lightning re-runs nothing there)."""
    strategy = cfg.strategy
    relaunches = "_target_" in strategy and strategy.get("start_method", "popen") == "popen"
    many = cfg.trainer.devices not in (1, "1") or cfg.trainer.num_nodes != 1
    if HydraConfig.get().mode == RunMode.MULTIRUN and relaunches and many and not cli.launched_externally():
        raise RecipeError("a multirun cannot use strategy.start_method=popen (it re-launches the script per rank); "
                          "use strategy.start_method=spawn (ddp_spawn), or launch each job with torchrun, srun or "
                          "hydra/launcher=submitit_slurm")


def best_checkpoint(trainer: pl.Trainer) -> str | None:
    """The best checkpoint the run wrote (by the monitored metric), else last.ckpt, else None."""
    callback = trainer.checkpoint_callback
    if callback is None:
        return None
    return getattr(callback, "best_model_path", "") or getattr(callback, "last_model_path", "") or None


def compression_results(cfg: DictConfig, parts: Parts, metrics: dict[str, float]) -> dict[str, Any]:
    """results.json's compression section: sizes of the final net, and the test accuracy of the net
    as each step found it (the copy a step keeps of the net before it first changes it) and at the
    end. Accuracies of a step a resumed run did not see begin are absent."""
    report = compression_report(parts.module.net, list(parts.compression), parts.dense_size)
    befores = [(name, getattr(step, "before", None)) for name, step in parts.compression.items()]
    accuracies = []
    for name, net in befores:
        acc = None
        if net is not None:
            probe = copy.deepcopy(parts.module)  # same task, metrics and loss; the snapshot as its net
            probe.net = net
            acc = test_metrics(cfg, probe, parts.datamodule)["test/acc"]
        accuracies.append(acc)
    afters = [*accuracies[1:], metrics["test/acc"]]
    report["per_step"] = [{"step": name, **({"acc_before": before} if before is not None else {}),
                           **({"acc_after": after} if after is not None else {})}
                          for name, before, after in zip(parts.compression, accuracies, afters)]
    if accuracies[0] is not None:
        report["acc_before"] = accuracies[0]
    report["acc_after"] = metrics["test/acc"]
    first = befores[0][1]
    write_report(Path(cfg.paths.run_dir), report, layer_table(first) if first is not None else [],
                 layer_table(parts.module.net))
    return report


def fit_and_test(cfg: DictConfig, choices: dict[str, Any], keep_weights: bool = False) -> dict[str, Any] | None:
    """Fit, then (rank 0) test the shipped weights on one device and write results.json.

    keep_weights: write checkpoints/last.ckpt even when no checkpoint callback ran (fast_dev_run),
    for a model that a later run of the recipe starts from."""
    run_dir = Path(cfg.paths.run_dir)
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    ckpt_path = resolve_ckpt_path(cfg.ckpt_path, run_dir)
    parts: Parts = build_training(cfg, choices)
    if ckpt_path:
        resumed = load_checkpoint(ckpt_path)
        restore_structure(resumed, parts.module.net)
        check_compatible(resumed, parts.module, ckpt_path)
    continue_history(parts.loggers, resumed if ckpt_path else None)  # start-up passed: metrics.csv may change
    trainer = parts.trainer
    start = time.perf_counter()
    with stop_on_sigterm(trainer):
        try:
            trainer.fit(parts.module, datamodule=parts.datamodule, ckpt_path=ckpt_path, weights_only=True)
        except Exception as err:
            stalled = collective_failure(err, trainer.strategy)  # a lost peer: one line, run dir kept
            if stalled is None:
                raise
            raise RunStopped(stalled) from None
    fit_seconds = time.perf_counter() - start
    parallel = parallel_results(trainer, parts.datamodule.batch_size, fit_seconds)
    if keep_weights and not best_checkpoint(trainer):
        trainer.save_checkpoint(run_dir / "checkpoints" / "last.ckpt")
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        # Testing runs on rank 0 alone: leave the group so metrics do not wait for other ranks
        # (a later fit in the same process, e.g. after a prerequisite, initializes it again).
        torch.distributed.destroy_process_group()
    if not trainer.is_global_zero:
        return None
    last = run_dir / "checkpoints" / "last.ckpt"
    # The checkpoint the run ships and tests: the best by val/acc, except that a compressed run ships
    # its final net (an earlier "best" epoch would be an uncompressed one).
    use_last = bool(parts.compression) or (keep_weights and not best_checkpoint(trainer))
    shipped = str(last) if use_last and last.is_file() else best_checkpoint(trainer)
    if shipped:
        parts.module.load_state_dict(fold_masks(load_checkpoint(shipped)["state_dict"]))
    metrics = test_metrics(cfg, parts.module, parts.datamodule, parts.loggers, step=trainer.global_step)
    results: dict[str, Any] = {
        "recipe": choices.get("recipe"),
        "task": choices.get("task"),
        "run_dir": relative(run_dir, Path.cwd()),
        "seed": cfg.seed,
        "metrics": metrics,
        "fit_seconds": round(fit_seconds, 3),
        "parallel": parallel,
    }
    if shipped:
        results["checkpoint"] = relative(shipped, run_dir)
    if parts.compression:
        results["compression"] = compression_results(cfg, parts, metrics)
    if cfg.get("export") and cfg.export.formats:
        results["export"] = export_best(cfg.export, parts.module.net, parts.datamodule, run_dir / "export")
    write_results(run_dir, results)
    print_summary(results)
    return results


def train(cfg: DictConfig) -> dict[str, Any] | None:
    """The whole run: earlier models a recipe needs, then its own fit and test."""
    check_launch(cfg)
    run_dir = Path(cfg.paths.run_dir)
    choices = dict(HydraConfig.get().runtime.choices)
    check_plan(cfg, choices)  # the whole plan, before any prerequisite trains
    ensure_prerequisites(cfg, run_dir, choices, fit_and_test)
    results = fit_and_test(cfg, choices)
    if results is not None:
        print(f"run dir: {run_dir}")
    return results


@hydra.main(version_base="1.3", config_path="pkg://conf", config_name="train")
def _hydra_main(cfg: DictConfig) -> None:
    cli.guarded(train, cfg, run_dir=cfg.paths.run_dir)


def main() -> None:
    cli.run_main(_hydra_main)


if __name__ == "__main__":
    main()
