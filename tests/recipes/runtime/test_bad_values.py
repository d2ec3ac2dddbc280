"""Values that Lightning accepts and then fails on mid-run, or turns into a meaningless run, are refused
at start-up in one line (exit 2, no traceback, no run dir); a batch larger than the training split,
which still trains, is one warning line. An override of a checkpoint's config that its data lacks is
named in the checkpoint's own terms. Each runs the real entry point in this process."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from recipes.errors import EXIT_BAD_INPUT
from tests.helpers.in_process import run_module_in_process
from tests.helpers.runs import assert_clean_failure, train_in_process

CASES = {
    "no batches per optimizer step": (
        ["trainer.accumulate_grad_batches=0"],
        ["trainer.accumulate_grad_batches=0 must be a positive count", "trainer.accumulate_grad_batches=1"],
    ),
    "negative batches per optimizer step": (
        ["trainer.accumulate_grad_batches=-2"],
        ["trainer.accumulate_grad_batches=-2 must be a positive count"],
    ),
    "no training batches": (
        ["trainer.limit_train_batches=0"],
        ["trainer.limit_train_batches=0 trains nothing", "trainer.limit_train_batches=null", "task.init_ckpt"],
    ),
    "no fraction of the training batches": (
        ["trainer.limit_train_batches=0.0"],
        ["trainer.limit_train_batches=0.0 trains nothing"],
    ),
    "negative gradient clip": (
        ["trainer.gradient_clip_val=-1"],
        ["trainer.gradient_clip_val=-1 must be a finite positive", "or null (no clipping)"],
    ),
    "infinite gradient clip": (["trainer.gradient_clip_val=inf"], ["trainer.gradient_clip_val=inf must be a finite"]),
    "never log": (
        ["trainer.log_every_n_steps=0"],
        ["trainer.log_every_n_steps=0 must be a positive count", "0 never logs it", "trainer.log_every_n_steps=50"],
    ),
    "negative log interval": (["trainer.log_every_n_steps=-5"], ["trainer.log_every_n_steps=-5 must be a positive"]),
    "no threads": (["threads=0"], ["threads=0 must be auto or a positive integer"]),
    "threads not a count": (["threads=many"], ["threads=many must be auto or a positive integer"]),
}


@pytest.mark.parametrize("case", CASES)
def test_bad_value(case: str, run_dir: Path) -> None:
    overrides, expected = CASES[case]
    proc = train_in_process(run_dir, *overrides)
    assert proc.returncode == EXIT_BAD_INPUT, proc.stderr[-2000:]
    assert_clean_failure(proc, run_dir, *expected)
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr[-2000:]


def test_a_smoke_test_may_limit_training_to_nothing_else(run_dir: Path) -> None:
    """limit_train_batches=0 is refused as max_epochs=0 is, and exempt alike: a fast_dev_run trains its one batch."""
    proc = train_in_process(run_dir, "debug=fast_dev_run", "trainer.limit_train_batches=0")
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_a_batch_larger_than_the_training_split_warns_once(run_dir: Path) -> None:
    """digits trains on 1257 images: a batch of 5000 still trains, one step per epoch, and says so in one line."""
    proc = train_in_process(run_dir, "data.batch_size=5000", "trainer.max_epochs=2")
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = [line for line in (proc.stdout + proc.stderr).splitlines() if "data.batch_size=5000" in line]
    assert len(lines) == 1, lines
    assert "WARNING" in lines[0] and "1257 training samples" in lines[0] and "one optimizer step" in lines[0]
    assert "data.batch_size=5000 is larger" in (run_dir / "train.log").read_text()
    results = json.loads((run_dir / "results.json").read_text())
    assert results["metrics"]["test/acc"] > 0  # it trained and tested: a warning, not a refusal


def test_evaluate_names_the_checkpoints_data_for_a_key_it_lacks(two_epoch_run: Path) -> None:
    """digits has no data.root: the error names the checkpoint's data choice and its keys, not
    ImageDataModule.__init__ (a base class the user never named)."""
    ckpt = two_epoch_run / json.loads((two_epoch_run / "results.json").read_text())["checkpoint"]
    proc = run_module_in_process("recipes.evaluate", f"ckpt_path={ckpt}", "+overrides.data.root=/x")
    assert proc.returncode == EXIT_BAD_INPUT, proc.stderr[-2000:]
    assert_clean_failure(proc, None, "overrides.data.root=/x", "this checkpoint's data (data=digits) has no root")
    assert (
        "its keys: as_sequence, augment, augment_draws, batch_size" in proc.stderr
        and "ImageDataModule" not in proc.stderr
    )


def test_evaluate_names_a_nested_key_its_task_lacks(two_epoch_run: Path) -> None:
    ckpt = two_epoch_run / json.loads((two_epoch_run / "results.json").read_text())["checkpoint"]
    proc = run_module_in_process("recipes.evaluate", f"ckpt_path={ckpt}", "+overrides.task.optimizer.momentum=0.9")
    assert_clean_failure(proc, None, "task.optimizer (task=classifier) has no momentum", "its keys: lr")
