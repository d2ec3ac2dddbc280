"""Run an entry point in a subprocess, exactly as a user would from the shell, or through the same
console-script body in this process (tests/helpers/in_process.py), and check how it ended.

Which to use: a subprocess (run_module, train, train_ok) where the process itself is what a test proves
(a shell's view of the CLI contract, once per kind of refusal; console scripts; DDP ranks, torchrun and
srun launches; signals; hangs); in this process (run_module_in_process, train_in_process,
train_ok_in_process) everywhere else: the same pre-flight, Hydra run, error guard and exit status, without
paying ~5 s of `import torch, lightning` per run. A trained model that several tests only read comes
from a session fixture (tests/conftest.py: two_epoch_run, feature_ckpt); a test that changes it works on a
copy (copy_run)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.helpers import REPO
from tests.helpers.in_process import run_module_in_process

__all__ = [
    "QUIET",
    "assert_clean_failure",
    "copy_run",
    "run_module",
    "train",
    "train_argv",
    "train_in_process",
    "train_ok",
    "train_ok_in_process",
    "user_env",
]

QUIET = ["callbacks.progress_bar=null", "trainer.enable_progress_bar=false"]


def user_env() -> dict[str, str]:
    """This environment as a user's shell has it: without HYDRA_FULL_ERROR (one-line errors)."""
    return {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}


def train_argv(run_dir: Path, *overrides: str) -> list[str]:
    """`python -m recipes.train hydra.run.dir=RUN_DIR` quiet, for a test that starts it itself (Popen)."""
    return [sys.executable, "-m", "recipes.train", f"hydra.run.dir={run_dir}", *QUIET, *overrides]


def run_module(
    module: str, *overrides: str, cwd: Path = REPO, timeout: int = 300, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """`python -m MODULE OVERRIDES...` in a subprocess; returns the completed process (text output)."""
    full_env = user_env()
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", module, *overrides],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=full_env,
    )


def run_python_script(script: str, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    """`python SCRIPT ARGS...` from the repository root, as a user runs the project's scripts (text output)."""
    return subprocess.run(
        [sys.executable, script, *args], cwd=REPO, capture_output=True, text=True, timeout=timeout, env=user_env()
    )


def train(run_dir: Path, *overrides: str, quiet: bool = True, **kwargs: Any) -> subprocess.CompletedProcess:
    """`python -m recipes.train hydra.run.dir=RUN_DIR ...`."""
    extra = QUIET if quiet else []
    return run_module("recipes.train", f"hydra.run.dir={run_dir}", *extra, *overrides, **kwargs)


def train_ok(run_dir: Path, *overrides: str, **kwargs: Any) -> dict[str, Any]:
    """Train and return results.json, failing the test with the run's output if it did not succeed."""
    return _results(run_dir, train(run_dir, *overrides, **kwargs))


def _results(run_dir: Path, proc: subprocess.CompletedProcess) -> dict[str, Any]:
    assert proc.returncode == 0, f"train failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return json.loads((run_dir / "results.json").read_text())


def train_in_process(run_dir: Path, *overrides: str, quiet: bool = True, **kwargs: Any) -> subprocess.CompletedProcess:
    """`python -m recipes.train hydra.run.dir=RUN_DIR ...` through the same entry, in this process: Hydra's
    run (run dir, .hydra/, train.log, its callbacks), the pre-flight and the error guard, all real."""
    extra = QUIET if quiet else []
    return run_module_in_process("recipes.train", f"hydra.run.dir={run_dir}", *extra, *overrides, **kwargs)


def train_ok_in_process(run_dir: Path, *overrides: str, **kwargs: Any) -> dict[str, Any]:
    """train_ok through train_in_process."""
    return _results(run_dir, train_in_process(run_dir, *overrides, **kwargs))


def assert_clean_failure(proc, run_dir: Path | None, *expected: str) -> None:
    """A refusal of bad input as the contract says: exit 2, no traceback, exactly one line on stderr, an
    `error:` line naming what is expected, and (when `run_dir` is given) no run dir left behind."""
    assert proc.returncode == 2, (proc.returncode, proc.stdout[-2000:], proc.stderr[-3000:])
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr[-3000:]
    last = lines[0]
    assert last.startswith("error: "), proc.stderr[-3000:]
    for text in expected:
        assert text in last, last
    if run_dir is not None:
        assert not run_dir.exists(), sorted(p.name for p in run_dir.rglob("*"))


def copy_run(run_dir: Path, tmp_path: Path) -> Path:
    """A private copy of a shared run, at tmp_path/run."""
    return Path(shutil.copytree(run_dir, tmp_path / "run"))
