"""A diverged run stops with one line naming the step, a non-zero exit, no NaN checkpoint and no
invalid JSON; an infinite learning rate is refused at start-up."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from recipes.stages.results import strict_json
from tests.helpers.runs import train, train_in_process


@pytest.mark.parametrize(
    "strategy",
    [
        "single",
        # a worker process diverges: its line reaches the main process, which prints it (not the worker's traceback)
        pytest.param("async", marks=pytest.mark.slow),
    ],
)
def test_nonfinite_loss_stops_the_run(run_dir: Path, strategy: str) -> None:
    overrides = ("task.optimizer.lr=1e30", "trainer.max_epochs=2")
    proc = (
        train_in_process(run_dir, *overrides) if strategy == "single" else train(run_dir, *overrides, "strategy=async")
    )
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: train/loss became nan at step "), last
    assert "(epoch 0)" in last and "task.optimizer.lr=1e+30" in last, last
    assert run_dir.is_dir(), "the run dir (logs) is evidence: kept"
    results = run_dir / "results.json"
    if results.exists():  # strict JSON only
        json.loads(results.read_text(), parse_constant=lambda c: pytest.fail(f"non-strict JSON constant {c}"))
    for ckpt in run_dir.rglob("*.ckpt"):  # none written after the loss became NaN
        state = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
        assert all(torch.isfinite(t).all() for t in state.values() if t.is_floating_point()), ckpt


def test_infinite_learning_rate_refused(run_dir: Path) -> None:
    proc = train_in_process(run_dir, "task.optimizer.lr=inf")
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines()[-1] == (
        "error: task.optimizer.lr=inf must be a finite positive number, e.g. task.optimizer.lr=0.001"
    )
    assert not run_dir.exists()


def test_strict_json_writes_null_for_nonfinite() -> None:
    text = strict_json({"a": math.nan, "b": [math.inf, -math.inf, 1.5], "c": {"d": 2}})
    assert json.loads(text) == {"a": None, "b": [None, None, 1.5], "c": {"d": 2}}
    assert "NaN" not in text and "Infinity" not in text


def test_a_run_that_did_not_learn_ends_with_a_warning(run_dir: Path) -> None:
    """lr=1e4 stays finite and ends near 31% on digits: the run succeeds, but its loss stayed above a
    uniform guess's (ln 10), and it says so."""
    proc = train_in_process(run_dir, "task.optimizer.lr=1e4", "trainer.max_epochs=3")
    assert proc.returncode == 0, proc.stderr[-2000:]
    output = proc.stdout + proc.stderr
    assert "the run did not learn" in output and "task.optimizer.lr=10000" in output, output[-3000:]
    assert "the run did not learn" in (run_dir / "train.log").read_text()
