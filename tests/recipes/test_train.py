"""The entry points end to end, as a user runs them: their console-script bodies with the user's
command-line arguments (in this process), the console script itself and the DDP launch in subprocesses."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from recipes.runtime.overrides import group_options
from tests.helpers import REPO
from tests.helpers.build import GENOTYPE
from tests.helpers.in_process import run_module_in_process
from tests.helpers.runs import run_module, train_ok_in_process


def test_main_job_reaches_the_target_accuracy(run_dir: Path) -> None:
    """`python -m recipes.train` with no overrides: the baseline on digits, test/acc >= 0.95."""
    results = train_ok_in_process(run_dir)
    assert results["recipe"] == "baseline" and results["task"] == "classifier" and results["seed"] == 0
    assert results["metrics"]["test/acc"] >= 0.95
    assert results["fit_seconds"] > 0
    ckpt = torch.load(run_dir / results["checkpoint"], weights_only=True)
    assert "recipe" in ckpt and ckpt["recipe"]["choices"]["model"] == "mlp"
    assert (run_dir / ".hydra" / "config.yaml").is_file()
    assert (run_dir / "csv" / "metrics.csv").is_file()
    assert list((run_dir / "tensorboard").glob("events.out.tfevents.*"))
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    metrics_csv = (run_dir / "csv" / "metrics.csv").read_text()
    assert "train/loss" in metrics_csv and "val/acc" in metrics_csv and "test/acc" in metrics_csv


# lm_finetune starts from a trained language model: tests/modules/test_language_model.py runs it from one.
@pytest.mark.parametrize("recipe", [r for r in group_options("recipe") if r != "lm_finetune"])
def test_every_recipe_runs_fast_dev_run(recipe: str, run_dir: Path) -> None:
    needs = {"darts_retrain": (f"model.genotype={GENOTYPE}",)}  # a searched genotype (recipe=darts searches first)
    results = train_ok_in_process(run_dir, f"recipe={recipe}", "debug=fast_dev_run", *needs.get(recipe, ()))
    assert results["recipe"] == recipe
    assert set(results) >= {"recipe", "task", "run_dir", "seed", "metrics", "fit_seconds"}
    assert "checkpoint" not in results  # fast_dev_run writes none: absent, never faked
    metrics = results["metrics"]
    if results["task"] == "gan":  # measured in a classifier's features, not by accuracy
        assert {"test/fd", "test/fd_real", "test/class_coverage"} <= set(metrics)
        assert metrics["test/fd"] > 0 and 0 <= metrics["test/class_coverage"] <= 1
    elif results["task"] == "lm":  # bits per character of the text, and its perplexity
        assert metrics["test/bpc"] > 0 and metrics["test/ppl"] > 1
    else:
        assert 0 <= metrics["test/acc"] <= 1


def test_console_script_is_the_same_command(tmp_path: Path) -> None:
    script = shutil.which("recipes-train")
    assert script, "pip install should put recipes-train on PATH"
    run_dir = tmp_path / "run"
    proc = subprocess.run(
        [
            script,
            f"hydra.run.dir={run_dir}",
            "debug=fast_dev_run",
            "callbacks.progress_bar=null",
            "trainer.enable_progress_bar=false",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads((run_dir / "results.json").read_text())["recipe"] == "baseline"
    assert shutil.which("recipes-evaluate")


def test_resume_ends_where_the_uninterrupted_run_ends(tmp_path: Path) -> None:
    """2 epochs, interrupted, then `ckpt_path=last` to 4 == 4 epochs straight (same weights, bit for bit)."""
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    train_ok_in_process(straight, "trainer.max_epochs=4")
    # An interruption after epoch 2 of a 4-epoch run: the LR schedule is the 4-epoch one throughout.
    train_ok_in_process(resumed, "trainer.max_epochs=4", "trainer.max_steps=40")  # 20 batches of 64 per epoch
    assert torch.load(resumed / "checkpoints" / "last.ckpt", weights_only=True)["epoch"] == 1
    train_ok_in_process(resumed, "trainer.max_epochs=4", "ckpt_path=last")
    a = torch.load(straight / "checkpoints" / "last.ckpt", weights_only=True)
    b = torch.load(resumed / "checkpoints" / "last.ckpt", weights_only=True)
    assert (a["epoch"], a["global_step"]) == (b["epoch"], b["global_step"]) == (3, 80)
    for name, weight in a["state_dict"].items():
        assert torch.equal(weight, b["state_dict"][name]), name


def test_evaluate_reproduces_the_training_end_metrics(run_dir: Path, tmp_path: Path) -> None:
    results = train_ok_in_process(run_dir, "trainer.max_epochs=3", "model=lenet5")
    out = tmp_path / "eval.json"
    proc = run_module_in_process("recipes.evaluate", f"ckpt_path={run_dir / results['checkpoint']}", f"out={out}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    evaluated = json.loads(out.read_text())
    assert evaluated["metrics"] == results["metrics"]  # exactly, not approximately
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == results["metrics"]
    assert not list(REPO.glob("evaluate.log")), "evaluate writes no files besides out="
    # A patched saved config (here another batch size) rebuilds the same test set: same accuracy.
    proc = run_module_in_process(
        "recipes.evaluate", f"ckpt_path={run_dir / results['checkpoint']}", "+overrides.data.batch_size=7"
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1])["test/acc"] == results["metrics"]["test/acc"]


@pytest.mark.parametrize("start_method", ["popen", pytest.param("spawn", marks=pytest.mark.slow)])
def test_ddp_sim_trains_with_one_run_dir(start_method: str, tmp_path: Path) -> None:
    """trainer=ddp_sim: 2 CPU ranks over gloo, one run dir, files written by rank 0 only; with
    start_method=spawn (ddp_spawn) the main process appends the test metrics to rank 0's metrics.csv."""
    env = {"RECIPES_OUTPUT_DIR": str(tmp_path / "outputs")}
    proc = run_module(
        "recipes.train",
        "trainer=ddp_sim",
        f"strategy.start_method={start_method}",
        "trainer.max_epochs=3",
        "callbacks.progress_bar=null",
        "trainer.enable_progress_bar=false",
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_dirs = list((tmp_path / "outputs" / "baseline").iterdir())
    assert len(run_dirs) == 1, run_dirs
    run_dir = run_dirs[0]
    assert sorted(p.name for p in run_dir.iterdir()) == [
        ".hydra",
        ".lock",
        "checkpoints",
        "csv",
        "results.json",
        "tensorboard",
        "train.log",
    ]
    results = json.loads((run_dir / "results.json").read_text())
    assert results["metrics"]["test/acc"] > 0.5
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["recipe"]["config"]["trainer"]["devices"] == 2
    csv_rows = (run_dir / "csv" / "metrics.csv").read_text().splitlines()
    assert "val/acc" in csv_rows[0] and "test/acc" in csv_rows[0] and len(csv_rows) > 3
