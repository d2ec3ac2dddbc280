"""Shared helpers: run an entry point in a subprocess, exactly as a user would from the shell."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
QUIET = ["callbacks.progress_bar=null", "trainer.enable_progress_bar=false"]


def run_module(module: str, *overrides: str, cwd: Path = REPO, timeout: int = 300,
               env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """`python -m MODULE OVERRIDES...` in a subprocess; returns the completed process (text output)."""
    full_env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", module, *overrides], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env=full_env)


def train(run_dir: Path, *overrides: str, quiet: bool = True, **kwargs: Any) -> subprocess.CompletedProcess:
    """`python -m recipes.train hydra.run.dir=RUN_DIR ...`."""
    extra = QUIET if quiet else []
    return run_module("recipes.train", f"hydra.run.dir={run_dir}", *extra, *overrides, **kwargs)


def train_ok(run_dir: Path, *overrides: str, **kwargs: Any) -> dict[str, Any]:
    """Train and return results.json, failing the test with the run's output if it did not succeed."""
    proc = train(run_dir, *overrides, **kwargs)
    assert proc.returncode == 0, f"train failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return json.loads((run_dir / "results.json").read_text())


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    return tmp_path / "run"
