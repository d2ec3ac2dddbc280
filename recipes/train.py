"""`python -m recipes.train [overrides]`: one straight pipeline, compose -> build -> fit -> test ->
report -> export -> write results, each stage a function of the module that owns it (recipes.assembly.training,
recipes.stages.fit, recipes.stages.scoring, recipes.stages.compression_results, recipes.stages.shipping, recipes.stages.results). The
console script `recipes-train` is the same command."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from lightning.pytorch import LightningDataModule
from omegaconf import DictConfig

from recipes.assembly.prerequisites import check_buildable, ensure_prerequisites
from recipes.assembly.startup_checks import check_startup
from recipes.assembly.training import Parts, build_run
from recipes.errors import RecipeError, RunStopped
from recipes.runtime.guard import guarded, run_main
from recipes.runtime.process_env import launched_externally
from recipes.runtime.resolvers import register_resolvers
from recipes.stages.compression_results import compression_results
from recipes.stages.fit import Fitted, fit
from recipes.stages.results import print_summary, run_results, write_results
from recipes.stages.robustness_report import robustness_results
from recipes.stages.scoring import score_shipped
from recipes.stages.shipping import export_shipped, wants_export
from recipes.stages.tracking import finish_runs, log_run_files

__all__ = ["check_launch", "main", "objective", "run", "train"]


def check_launch(cfg: DictConfig) -> None:
    """A strategy that re-runs this script per rank cannot live inside a Hydra multirun (srun, torchrun
    and submitit start every rank themselves, so Lightning re-runs nothing there)."""
    strategy = cfg.strategy
    relaunches = "_target_" in strategy and strategy.get("start_method", "popen") == "popen"
    many = cfg.trainer.devices not in (1, "1") or cfg.trainer.num_nodes != 1
    if HydraConfig.get().mode == RunMode.MULTIRUN and relaunches and many and not launched_externally():
        raise RecipeError(
            "a multirun cannot use strategy.start_method=popen (it re-launches the script per rank); "
            "use strategy.start_method=spawn (ddp_spawn), or launch each job with torchrun, srun or "
            "hydra/launcher=submitit_slurm"
        )


def run(
    cfg: DictConfig,
    choices: dict[str, Any],
    keep_weights: bool = False,
    datamodule: LightningDataModule | None = None,
) -> dict[str, Any] | None:
    """One model, build to results.json; rank 0 returns the results, other ranks None. Its plan was
    checked first (`train`'s check_startup, which covers the prerequisite models too).

    keep_weights: write checkpoints/last.ckpt even when no checkpoint callback ran (fast_dev_run),
    for a model that a later run of the recipe starts from.
    datamodule: the run's data module when the start-up checks built it (check_buildable)."""
    run_dir = Path(cfg.paths.run_dir)
    parts = build_run(cfg, choices, datamodule)
    try:
        results = _fit_and_report(cfg, choices, parts, run_dir, keep_weights)
    except BaseException:
        finish_runs(parts.loggers, failed=True)
        raise
    finish_runs(parts.loggers, failed=False)
    return results


def _fit_and_report(
    cfg: DictConfig, choices: dict[str, Any], parts: Parts, run_dir: Path, keep_weights: bool
) -> dict[str, Any] | None:
    fitted = fit(parts, run_dir, keep_weights)
    if fitted is None:
        return None
    try:
        return _report(cfg, choices, parts, run_dir, fitted)
    except RecipeError as err:  # the training is done: its checkpoints are the user's, not a half-written run
        raise RunStopped(f"{err}; {_kept(run_dir, fitted)}") from None


def _kept(run_dir: Path, fitted: Fitted) -> str:
    """How to go on from a trained run whose test, report or export failed: it is kept, with its checkpoint."""
    ckpt = Path(fitted.shipped) if fitted.shipped else run_dir / "checkpoints" / "last.ckpt"
    if not ckpt.is_file():
        return f"the trained run is kept in {run_dir}"
    return (
        f"the trained run is kept in {run_dir}; go on from its checkpoint with `python -m recipes.export "
        f"ckpt_path={ckpt}` (with the export.* overrides that fit) or `python -m recipes.evaluate ckpt_path={ckpt}`"
    )


def _report(cfg: DictConfig, choices: dict[str, Any], parts: Parts, run_dir: Path, fitted: Fitted) -> dict[str, Any]:
    metrics = score_shipped(
        cfg, parts.module, parts.datamodule, fitted.shipped, parts.loggers, step=parts.trainer.global_step
    )
    results = run_results(
        choices,
        run_dir,
        cfg.seed,
        metrics,
        fitted.seconds,
        fitted.parallel,
        fitted.shipped,
        fitted.monitor,
        parts.module.run_record(),
    )
    results.update(robustness_results(cfg, parts.module, parts.datamodule))  # `attack=...`: the robustness section
    if parts.compression:
        results["compression"] = compression_results(cfg, parts, metrics)
    if wants_export(cfg):
        results["export"] = export_shipped(cfg.export, parts.module, parts.datamodule, run_dir / "export")
    write_results(run_dir, results)
    log_run_files(parts.loggers, run_dir)
    print_summary(results)
    return results


def train(cfg: DictConfig) -> dict[str, Any] | None:
    """The whole run: start-up checks of the plan, earlier models a recipe needs, then its own run."""
    check_launch(cfg)
    run_dir = Path(cfg.paths.run_dir)
    choices = dict(HydraConfig.get().runtime.choices)
    check_startup(cfg, choices)  # the whole plan, before any prerequisite trains
    built = check_buildable(cfg)
    ensure_prerequisites(cfg, run_dir, choices, run, built.prerequisites)
    return run(cfg, choices, datamodule=built.datamodule)  # its summary ends with the run dir


def objective(results: dict[str, Any] | None) -> float | None:
    """What a sweep optimizes: the task's monitored metric at the run's best checkpoint (results.json's
    monitor.best; its direction is the task's monitor_mode), or None (another rank, nothing scored)."""
    monitor = (results or {}).get("monitor")
    return float(monitor["best"]) if monitor else None


# Sweep jobs in another process (hydra/launcher=joblib, submitit) compose their config there, with
# this module imported (to unpickle the task function) but without main(): the resolvers must exist.
register_resolvers()


@hydra.main(version_base="1.3", config_path="pkg://conf", config_name="train")
def _hydra_main(cfg: DictConfig) -> float | None:
    return objective(guarded(train, cfg, run_dir=cfg.paths.run_dir))


def main() -> None:
    run_main(_hydra_main)


if __name__ == "__main__":
    main()
