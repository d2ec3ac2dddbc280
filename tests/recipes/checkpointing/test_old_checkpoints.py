"""Checkpoints written before the package layout (tests/fixtures/checkpoints_v1, made by commit c705098)
still load, evaluate to the metrics their run reported, and resume: the `_target_`s and module paths
they name are a public contract."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from hydra.utils import get_object

from modules.task import Task
from recipes.checkpointing.format import KEY
from recipes.checkpointing.trust import TARGET, entries
from tests.helpers import REPO
from tests.helpers.in_process import run_module_in_process
from tests.helpers.runs import train_ok_in_process

FIXTURES = REPO / "tests" / "fixtures" / "checkpoints_v1"
EXPECTED = json.loads((FIXTURES / "expected.json").read_text())
# The overrides each fixture was trained with (tests/fixtures/checkpoints_v1/README.md).
TRAINED_WITH = {
    "mlp": ["model.hidden=[16]"],
    "prune": [
        "recipe=prune",
        "model.hidden=[16]",
        "compress.prune.start_epoch=0",
        "compress.prune.end_epoch=1",
        "compress.prune.sparsity=0.5",
    ],
}


@pytest.mark.parametrize("name", ["mlp", "prune"])
def test_old_checkpoint_evaluates_to_its_metrics(name: str, tmp_path: Path) -> None:
    out = tmp_path / "eval.json"
    proc = run_module_in_process("recipes.evaluate", f"ckpt_path={FIXTURES / f'{name}.ckpt'}", f"out={out}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(out.read_text())["metrics"] == EXPECTED[name]["metrics"]


@pytest.mark.parametrize("name", ["mlp", "prune"])
def test_every_target_an_old_checkpoint_names_resolves(name: str) -> None:
    """Each `_target_` in the config an old checkpoint saved (data, model, task, and also the callbacks,
    loggers and plugins a run built, several of which moved: recipes.MOVED) still imports."""
    config = torch.load(FIXTURES / f"{name}.ckpt", weights_only=True, map_location="cpu")[KEY]["config"]
    targets = {value for _, key, value in entries(config) if key == TARGET}
    assert "recipes.loggers.HistoryCSVLogger" in targets  # a module that moved
    for target in sorted(targets):
        assert callable(get_object(target)), target


def test_old_pruned_checkpoint_loads_with_its_zeros() -> None:
    task = Task.load_from_checkpoint(str(FIXTURES / "prune.ckpt"))
    nonzero = sum(int(torch.count_nonzero(p)) for p in task.net.parameters())
    assert nonzero == EXPECTED["prune"]["nonzero_params"]


@pytest.mark.parametrize("name, epochs", [("mlp", 3), ("prune", 4)])
def test_old_checkpoint_resumes(name: str, epochs: int, tmp_path: Path) -> None:
    run_dir = tmp_path / name
    (run_dir / "checkpoints").mkdir(parents=True)
    shutil.copy(FIXTURES / f"{name}.ckpt", run_dir / "checkpoints" / "last.ckpt")
    results = train_ok_in_process(run_dir, *TRAINED_WITH[name], f"trainer.max_epochs={epochs}", "ckpt_path=last")
    ckpt = torch.load(run_dir / results["checkpoint"], weights_only=True, map_location="cpu")
    assert ckpt["epoch"] == epochs - 1
    assert results["metrics"]["test/acc"] > 0.1
