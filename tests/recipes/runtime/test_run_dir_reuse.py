"""A finished run dir is not trained into again by accident: a resume whose checkpoint another recipe
or compression plan wrote, and a new run of the same recipe (without overwrite=true), are refused in one
line, exit 2, before Hydra writes `.hydra/`, so every file of the finished run stays byte for byte."""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from recipes.runtime.run_lock import RunDirLock
from tests.helpers.in_process import run_module_in_process
from tests.helpers.runs import (
    QUIET,
    copy_run,
    run_python_script,
    train,
    train_in_process,
    train_ok,
    train_ok_in_process,
)

CONFIGS = ("config.yaml", "hydra.yaml", "overrides.yaml")
TINY = ("trainer.max_epochs=1", "trainer.limit_train_batches=2", "trainer.limit_val_batches=1")


def tree(run_dir: Path) -> dict[str, str]:
    """Every file of a run dir by relative path, with the sha256 of its bytes."""
    return {
        str(p.relative_to(run_dir)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in run_dir.rglob("*")
        if p.is_file()
    }


def refused(proc: subprocess.CompletedProcess, *expected: str) -> str:
    """Exit 2, no traceback, exactly one stderr line, an `error:` naming everything expected."""
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr[-3000:]
    for text in expected:
        assert text in lines[0], lines[0]
    return lines[0]


@pytest.fixture
def finished(two_epoch_run: Path, tmp_path: Path) -> Path:
    """A private copy of a finished baseline run."""
    return copy_run(two_epoch_run, tmp_path)


def test_a_resume_by_another_recipe_is_refused_before_hydra_writes(finished: Path) -> None:
    before = tree(finished)
    proc = train_in_process(finished, "recipe=prune", "ckpt_path=last")
    last = finished / "checkpoints" / "last.ckpt"
    refused(proc, f"ckpt_path=last ({last}) was written by recipe=baseline", "recipe=prune", "hydra.run.dir")
    assert tree(finished) == before, "the finished run's files (.hydra/ included) must stay byte for byte"
    assert {f".hydra/{name}" for name in CONFIGS} <= set(before)


def test_a_resume_with_another_compression_plan_is_refused(finished: Path) -> None:
    before = tree(finished)
    refused(train_in_process(finished, "compress=[prune]", "ckpt_path=last"), "compress=[]", "compress=[prune]")
    assert tree(finished) == before


def test_a_resume_refused_after_start_up_puts_hydra_back(finished: Path) -> None:
    """A misfit only the built module shows (another net width) is refused after Hydra wrote .hydra/:
    the finished run's .hydra/ files are put back as they were."""
    configs = {name: (finished / ".hydra" / name).read_bytes() for name in CONFIGS}
    checkpoints = {k: v for k, v in tree(finished).items() if k.startswith("checkpoints")}
    refused(train_in_process(finished, "model.hidden=[64]", "ckpt_path=last"), "does not fit", "shape")
    assert {name: (finished / ".hydra" / name).read_bytes() for name in CONFIGS} == configs
    assert {k: v for k, v in tree(finished).items() if k.startswith("checkpoints")} == checkpoints


def test_a_new_run_in_a_finished_run_dir_of_the_same_recipe_is_refused(finished: Path) -> None:
    before = tree(finished)
    proc = train_in_process(finished, *TINY)
    refused(proc, f"hydra.run.dir={finished} holds a finished recipe=baseline run", "ckpt_path=last", "overwrite=true")
    assert tree(finished) == before


def test_overwrite_true_trains_again_in_the_finished_run_dir(finished: Path) -> None:
    results = train_ok_in_process(finished, "overwrite=true", *TINY)
    assert results["recipe"] == "baseline"
    assert "overwrite=true" in (finished / ".hydra" / "overrides.yaml").read_text()


def test_other_ranks_are_not_refused(finished: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Lightning's DDP children re-run the script in rank 0's finished run dir: only rank 0 checks it
    (the lock would refuse rank 0 here)."""
    config = OmegaConf.create(
        {"ckpt_path": None, "hydra": {"runtime": {"choices": {"recipe": "baseline"}}, "run": {"dir": str(finished)}}}
    )
    monkeypatch.setenv("LOCAL_RANK", "1")
    before = tree(finished)
    RunDirLock().lock(finished, config)
    assert tree(finished) == before


def test_a_sweep_run_again_in_its_sweep_dir_still_runs(tmp_path: Path) -> None:
    """A sweep's job dirs are its trials': the same sweep again in the same sweep dir is not refused."""
    sweep = tmp_path / "sweep"
    args = ("--multirun", "seed=0", f"hydra.sweep.dir={sweep}", *QUIET, *TINY)
    for _ in range(2):
        proc = run_module_in_process("recipes.train", *args)
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
        assert (sweep / "0" / "results.json").is_file()


@pytest.mark.slow  # long: runs in CI's slow pass (python -m pytest -m slow)
def test_a_ddp_resume_runs_and_a_ddp_rerun_is_refused(run_dir: Path) -> None:
    """Lightning's popen children re-run the script with rank 0's run dir and ckpt_path=last: only
    rank 0 checks, so the resume trains on every rank; a new run there is refused before any rank starts."""
    train_ok(run_dir, "trainer=ddp_sim", *TINY)
    resumed = train_ok(run_dir, "trainer=ddp_sim", *TINY[1:], "trainer.max_epochs=2", "ckpt_path=last")
    assert resumed["recipe"] == "baseline"
    before = tree(run_dir)
    refused(train(run_dir, "trainer=ddp_sim", *TINY), "holds a finished recipe=baseline run", "overwrite=true")
    assert tree(run_dir) == before


@pytest.mark.slow  # long: runs in CI's slow pass (python -m pytest -m slow)
def test_fault_script_cases_fail_cleanly() -> None:
    """scripts/faults.py runs every case as a user would (fresh processes, a real finished run): the
    refused resume and rerun, the entry points without ckpt_path, submitit_slurm without SLURM, and an
    unreachable MLflow server."""
    proc = run_python_script("scripts/faults.py")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stdout.count("PASS") == 8 and "FAIL" not in proc.stdout, proc.stdout
