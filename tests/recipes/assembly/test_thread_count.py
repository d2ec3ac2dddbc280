"""The ThreadCount callback in real runs: the count it sets is results.json's `parallel.threads` and one
printed line says why; `threads=N` sets N; a user's OMP_NUM_THREADS wins over auto; under DDP each rank
gets its share of the CPUs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from recipes.runtime.threads import USER_OMP_ENV, available_cpus
from tests.helpers.in_process import run_module_in_process
from tests.helpers.runs import assert_clean_failure, train, train_in_process

TINY = ("trainer.max_epochs=1", "trainer.limit_train_batches=2", "trainer.limit_val_batches=1", "logger=csv")


@pytest.fixture
def auto_env(monkeypatch: pytest.MonkeyPatch):
    """No OMP_NUM_THREADS from the user (the suite runs with one), and torch's count restored after."""
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv(USER_OMP_ENV, raising=False)
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def run_json(run_dir: Path, *overrides: str) -> tuple[dict, str]:
    proc = train_in_process(run_dir, *TINY, *overrides)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads((run_dir / "results.json").read_text()), proc.stdout


def test_auto_gives_a_tiny_net_one_thread(tmp_path: Path, auto_env) -> None:
    results, stdout = run_json(tmp_path / "run")
    assert results["parallel"]["threads"] == 1
    assert "threads: 1 per process (auto: the net's forward is 6.4 MFLOP per batch, below 100)" in stdout


def test_threads_n_sets_n(tmp_path: Path, auto_env) -> None:
    results, stdout = run_json(tmp_path / "two", "threads=2")
    assert results["parallel"]["threads"] == 2 and "threads: 2 per process (threads=2)" in stdout
    results, _ = run_json(tmp_path / "one", "threads=1")
    assert results["parallel"]["threads"] == 1


def test_the_users_omp_num_threads_wins(tmp_path: Path) -> None:
    proc = train(tmp_path / "run", *TINY, env={"OMP_NUM_THREADS": "3"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "threads: 3 per process (OMP_NUM_THREADS=3)" in proc.stdout


def test_evaluate_follows_the_checkpoints_rule(tmp_path: Path, auto_env) -> None:
    """recipes.evaluate (as export, attack and generate, through the same rebuild) sets its threads by the
    saved `threads` setting, which +overrides.threads changes; a bad value is one line, exit 2."""
    results, _ = run_json(tmp_path / "run", "threads=2")
    ckpt = f"ckpt_path={tmp_path / 'run' / results['checkpoint']}"
    proc = run_module_in_process("recipes.evaluate", ckpt)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "threads: 2 (threads=2)" in proc.stdout and torch.get_num_threads() == 2
    proc = run_module_in_process("recipes.evaluate", ckpt, "+overrides.threads=auto")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "threads: 1 (auto: the net's forward is" in proc.stdout and torch.get_num_threads() == 1
    bad = run_module_in_process("recipes.evaluate", ckpt, "+overrides.threads=0")
    assert_clean_failure(bad, None, "threads=0 must be auto or a positive integer")


@pytest.mark.slow
def test_each_ddp_rank_gets_its_share(tmp_path: Path, auto_env) -> None:
    """A net above the tiny threshold (convnet, 128 a batch: 156 MFLOP), 2 CPU ranks: each gets cpus // 2,
    although Lightning sets OMP_NUM_THREADS in each rank before the callback runs."""
    probe = tmp_path / "probe"
    proc = train(
        tmp_path / "run",
        *TINY,
        "trainer=ddp_sim",
        "model=convnet",
        "data.batch_size=128",
        "+callbacks.threads_probe._target_=tests.helpers.thread_probe.ThreadProbe",
        f"+callbacks.threads_probe.out_dir={probe}",
        timeout=240,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    share = max(1, available_cpus() // 2)
    assert f"threads: {share} per process (auto: {available_cpus()} CPUs / (2 local processes x" in proc.stdout
    assert json.loads((tmp_path / "run" / "results.json").read_text())["parallel"]["threads"] == share
    assert [(probe / f"rank{r}.txt").read_text() for r in (0, 1)] == [str(share)] * 2


@pytest.mark.slow
def test_async_reports_its_workers_count(tmp_path: Path, auto_env) -> None:
    """strategy=async fits in worker processes: results.json, written by the main process (which keeps
    torch's default count), reports the workers' count (1 for the tiny MLP)."""
    proc = train(tmp_path / "run", *TINY, "strategy=async", "trainer=ddp_sim", timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((tmp_path / "run" / "results.json").read_text())["parallel"]["threads"] == 1
