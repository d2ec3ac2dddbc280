"""Experiment tracking (the `track` extra): logger=mlflow on a SQLite store, read back with MLflow's own
client; logger=wandb writes an offline run. Each run is the CLI, as a user launches it."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.runs import train_ok

FAST = ["trainer.max_epochs=2", "trainer.limit_train_batches=4", "callbacks.model_summary=null"]
FILE_STORE = {"MLFLOW_ALLOW_FILE_STORE": "true"}  # MLflow 3 refuses a folder store without it


def mlflow_run(uri: str, run_dir: Path, results: dict) -> tuple[Any, Any]:
    """The one MLflow run a recipes.train run made, read back with MLflow's client; checks what every
    store holds: the resolved config as parameters, each epoch's metrics, the test metrics, results.json."""
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("baseline")  # experiment_name: the recipe
    (found,) = client.search_runs([experiment.experiment_id])
    assert found.info.status == "FINISHED" and found.info.run_name == str(run_dir)
    params = found.data.params
    assert params["task/optimizer/lr"] == "0.001" and params["trainer/max_epochs"] == "2"  # the resolved config
    history = client.get_metric_history(found.info.run_id, "val/acc")
    assert sorted(m.step for m in history) == [m.step for m in history] and len(history) == 2  # one per epoch
    assert max(m.value for m in history) == pytest.approx(results["monitor"]["best"])
    assert found.data.metrics["test/acc"] == pytest.approx(results["metrics"]["test/acc"])
    copy = client.download_artifacts(found.info.run_id, "results.json", str(run_dir.parent))
    assert json.loads(Path(copy).read_text()) == results
    return client, found


def test_mlflow_file_store_run_holds_the_config_metrics_and_results(run_dir: Path, tmp_path: Path) -> None:
    """A local file store (what MLflow 3 allows with MLFLOW_ALLOW_FILE_STORE=true): the cheap store."""
    uri = f"file:{tmp_path / 'mlruns'}"
    results = train_ok(
        run_dir,
        *FAST,
        "logger=mlflow",
        f"logger.mlflow.tracking_uri={uri}",
        f"logger.mlflow.artifact_location={tmp_path / 'artifacts'}",
        env=FILE_STORE,
    )
    os.environ.update(FILE_STORE)
    client, found = mlflow_run(uri, run_dir, results)
    assert {a.path for a in client.list_artifacts(found.info.run_id)} == {"results.json", ".hydra"}
    assert {a.path for a in client.list_artifacts(found.info.run_id, ".hydra")} == {
        ".hydra/config.yaml",
        ".hydra/overrides.yaml",
    }


@pytest.mark.slow  # long: runs in CI's slow pass (python -m pytest -m slow)
def test_mlflow_sqlite_run_holds_the_config_metrics_results_and_exports(run_dir: Path, tmp_path: Path) -> None:
    """The default store, SQLite, in a folder that does not exist yet (the logger makes it), with an export."""
    uri = f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}"
    results = train_ok(
        run_dir,
        *FAST,
        "logger=mlflow",
        f"logger.mlflow.tracking_uri={uri}",
        f"logger.mlflow.artifact_location={tmp_path / 'artifacts'}",
        "export=onnx",
    )
    client, found = mlflow_run(uri, run_dir, results)
    assert {a.path for a in client.list_artifacts(found.info.run_id)} == {"results.json", ".hydra", "export"}
    assert {a.path for a in client.list_artifacts(found.info.run_id, "export")} == {"export/model.onnx"}


@pytest.mark.slow  # long: runs in CI's slow pass (python -m pytest -m slow)
def test_wandb_offline_run_is_written_in_the_run_dir(run_dir: Path) -> None:
    results = train_ok(run_dir, *FAST, "logger=wandb", env={"WANDB_SILENT": "true"})
    (offline,) = (run_dir / "wandb").glob("offline-run-*")
    (records,) = offline.glob("run-*.wandb")  # the run, for `wandb sync`: config, history, summary, artifacts
    data = records.read_bytes()
    for text in (b"val/acc", b"test/acc", b"results.json", b".hydra/config.yaml", b"lr"):
        assert text in data, text
    assert results["metrics"]["test/acc"] > 0


def test_a_new_mlflow_store_leaves_no_mlruns_and_no_migration_lines(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    """Opening a new SQLite store runs MLflow's migrations: no INFO lines from them, the root logger's
    handlers (a run's train.log) and level kept, and no empty ./mlruns in the working directory."""
    pytest.importorskip("mlflow")
    from recipes.stages.tracking import LocalMLFlowLogger

    monkeypatch.chdir(tmp_path)
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    LocalMLFlowLogger(experiment_name="x", tracking_uri=f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}")
    assert (tmp_path / "store" / "mlflow.db").is_file() and not (tmp_path / "mlruns").exists()
    assert root.handlers == handlers and root.level == level
    out, err = capfd.readouterr()
    assert "alembic" not in out + err and "Creating initial MLflow database" not in out + err


def test_wandb_gets_no_settings_it_ignores(tmp_path: Path) -> None:
    """W&B warns at every run about `anonymous` (always passed by Lightning) and, offline, `resume`."""
    pytest.importorskip("wandb")
    from recipes.stages.tracking import OfflineWandbLogger

    logger = OfflineWandbLogger(offline=True, save_dir=str(tmp_path), project="p")
    assert "anonymous" not in logger._wandb_init and "resume" not in logger._wandb_init
