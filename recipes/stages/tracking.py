"""Experiment trackers (logger=mlflow, logger=wandb; the `track` extra): Lightning's own loggers log the
config (as hyper-parameters) and the metrics while the run trains; at its end the run hands them its
files: results.json, the composed config and overrides (.hydra/), and the verified exports (export/).

MLflow runs on a local store, SQLite by default (MLflow 3 refuses a plain ./mlruns folder unless
MLFLOW_ALLOW_FILE_STORE=true); W&B runs offline (`wandb sync <run dir>/wandb/offline-run-*` uploads one).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from lightning.pytorch.loggers import Logger, MLFlowLogger, WandbLogger
from typing_extensions import override

from recipes.runtime.process_env import process_rank
from recipes.stages.results import FILE_NAME

__all__ = ["LocalMLFlowLogger", "OfflineWandbLogger", "RUN_FILES", "RUN_FOLDERS", "finish_runs", "log_run_files"]

# What a tracker receives at the end of a run, relative to the run dir: files, then folders.
RUN_FILES = (FILE_NAME, ".hydra/config.yaml", ".hydra/overrides.yaml")
RUN_FOLDERS = ("export",)


# The default artifact root MLflow's SQL store creates in the working directory when it opens, though each
# experiment here has its own artifact_location (conf/logger/mlflow.yaml): left empty, in the user's way.
_STRAY_ARTIFACT_ROOT = Path("mlruns")


# The loggers whose set-up MLflow's database migrations replace (mlflow/store/db_migrations/alembic.ini).
_MIGRATION_LOGGERS = ("", "sqlalchemy.engine", "alembic")


@contextlib.contextmanager
def _quiet_store_creation() -> Iterator[None]:
    """Opening a new SQL store runs MLflow's migrations: 36 INFO lines nobody can act on, and a
    logging.config.fileConfig that replaces the root logger's handlers (the run's train.log among
    them) and level. Both kept out of the run: INFO and below dropped meanwhile, the loggers put back."""
    saved = {name: logging.getLogger(name) for name in _MIGRATION_LOGGERS}
    state = {name: (list(lg.handlers), lg.level, lg.propagate) for name, lg in saved.items()}
    disabled = logging.root.manager.disable
    logging.disable(logging.INFO)
    try:
        yield
    finally:
        logging.disable(disabled)
        for name, logger in saved.items():
            handlers, level, propagate = state[name]
            logger.handlers[:] = handlers
            logger.setLevel(level)
            logger.propagate = propagate


class LocalMLFlowLogger(MLFlowLogger):
    """Lightning's MLFlowLogger, creating the folder of a SQLite store first (SQLite creates the file
    but not its folder), on rank 0 only, and leaving no empty ./mlruns behind."""

    @override
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        uri = kwargs.get("tracking_uri")
        if uri and str(uri).startswith("sqlite:") and process_rank() == 0:
            from sqlalchemy.engine import make_url

            database = make_url(str(uri)).database
            if database and database != ":memory:":
                Path(database).parent.mkdir(parents=True, exist_ok=True)
        stray = not _STRAY_ARTIFACT_ROOT.exists()
        with _quiet_store_creation():
            super().__init__(*args, **kwargs)  # opens the store (once per process and URI)
        if stray and _STRAY_ARTIFACT_ROOT.is_dir() and not any(_STRAY_ARTIFACT_ROOT.iterdir()):
            _STRAY_ARTIFACT_ROOT.rmdir()


class OfflineWandbLogger(WandbLogger):
    """Lightning's WandbLogger without the two init settings W&B warns it ignores at every run: `anonymous`
    (Lightning always passes it; W&B no longer uses it) and, offline, `resume` (an offline run is always new)."""

    @override
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self._wandb_init.get("anonymous") is None:
            self._wandb_init.pop("anonymous", None)
        if self._offline and "resume" not in kwargs:
            self._wandb_init.pop("resume", None)


def _run_files(run_dir: Path) -> tuple[list[Path], list[Path]]:
    files = [run_dir / name for name in RUN_FILES if (run_dir / name).is_file()]
    folders = [run_dir / name for name in RUN_FOLDERS if (run_dir / name).is_dir()]
    return files, folders


def log_run_files(loggers: list[Logger], run_dir: Path) -> None:
    """Hand each tracker the run's files (rank 0; other ranks' trackers are Lightning's no-op stand-ins)."""
    files, folders = _run_files(run_dir)
    for logger in loggers:
        if isinstance(logger, MLFlowLogger) and logger.run_id:
            for path in files:
                parent = str(path.parent.relative_to(run_dir))
                logger.experiment.log_artifact(logger.run_id, str(path), None if parent == "." else parent)
            for folder in folders:
                logger.experiment.log_artifacts(logger.run_id, str(folder), folder.name)
        elif isinstance(logger, WandbLogger) and process_rank() == 0:
            import wandb

            artifact = wandb.Artifact(f"run-files-{logger.experiment.id}", type="run-files")
            for path in files:
                artifact.add_file(str(path), name=str(path.relative_to(run_dir)))
            for folder in folders:
                artifact.add_dir(str(folder), name=folder.name)
            logger.experiment.log_artifact(artifact)


def finish_runs(loggers: list[Logger], failed: bool) -> None:
    """End the W&B run this process opened, so the next run in the process (a sweep's next trial) opens
    its own instead of appending to it; MLflow runs are ended by Lightning (MLFlowLogger.finalize)."""
    if process_rank() != 0 or not any(isinstance(logger, WandbLogger) for logger in loggers):
        return
    import wandb

    if wandb.run is not None:
        wandb.finish(exit_code=1 if failed else 0)
