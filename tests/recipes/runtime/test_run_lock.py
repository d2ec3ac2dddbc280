"""One run per run dir: a second run in a dir in use refuses in one line and touches nothing; a new
run in the finished dir of another recipe refuses unless it resumes."""

from __future__ import annotations

import fcntl
from pathlib import Path

from tests.helpers.runs import train, train_in_process, train_ok_in_process


def snapshot(run_dir: Path) -> dict[str, float]:
    return {str(p.relative_to(run_dir)): p.stat().st_mtime_ns for p in run_dir.rglob("*") if p.is_file()}


def test_locked_and_foreign_run_dirs_refuse(run_dir: Path) -> None:
    train_ok_in_process(run_dir, "trainer.max_epochs=1", "trainer.limit_train_batches=2", "trainer.limit_val_batches=1")
    assert (run_dir / ".lock").is_file()
    before = snapshot(run_dir)

    with open(run_dir / ".lock", "a") as held:  # a run in progress holds this flock
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        proc = train(run_dir, "trainer.max_epochs=1")  # another process, as a second run would be
    assert proc.returncode == 2, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: hydra.run.dir={run_dir} is in use by another run"), last
    assert snapshot(run_dir) == before, "the refused run must not touch the first run's files (.hydra/ included)"

    proc = train_in_process(run_dir, "recipe=prune", "trainer.max_epochs=1")
    assert proc.returncode == 2, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert "holds a finished recipe=baseline run" in last and "recipe=prune" in last, last
    assert snapshot(run_dir) == before
