"""The fixtures every test folder shares: a run dir, and trained runs and checkpoints that several tests
only read (trained once per session; a test that changes one works on a copy: copy_run). The functions
tests call are in tests/helpers/."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers.build import write_untrained_checkpoint
from tests.helpers.runs import train_ok_in_process


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    return tmp_path / "run"


@pytest.fixture(scope="session")
def two_epoch_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished `python -m recipes.train trainer.max_epochs=2` (baseline MLP on digits): results.json,
    checkpoints/last.ckpt and the best checkpoint (both at epoch 1), csv/metrics.csv, train.log. Trained
    once for every test that needs a trained baseline; a test that changes the run works on copy_run(...)."""
    run_dir = tmp_path_factory.mktemp("baseline") / "run"
    train_ok_in_process(run_dir, "trainer.max_epochs=2")
    return run_dir


@pytest.fixture(scope="session")
def feature_ckpt(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A recipes checkpoint of an (untrained) digits classifier, written as recipes.train writes one:
    what a task that measures with a reference classifier (task=gan's task.feature_ckpt) needs to be
    built. Its weights do not matter to the tests that use it."""
    folder = tmp_path_factory.mktemp("feature")
    return write_untrained_checkpoint(
        folder / "feature.ckpt", {"recipe": "baseline", "task": "classifier", "model": "mlp"}
    )
