"""What the comparison and benchmark scripts share: launch one `python -m recipes.train` run as a user
would, and the mean +- std of accuracies over seeds. (Not named `runs`: the README's run folder, runs/,
has that name.)"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
from pathlib import Path

__all__ = ["QUIET", "mean_std", "train"]

QUIET = ["callbacks.progress_bar=null", "trainer.enable_progress_bar=false", "callbacks.model_summary=null"]


def train(run_dir: Path, *overrides: str) -> dict:
    """One `python -m recipes.train` run; its results.json (exits with the run's error if it failed).
    A script run again with the same --out trains its rows again: overwrite=true (conf/train.yaml)."""
    cmd = [sys.executable, "-m", "recipes.train", f"hydra.run.dir={run_dir}", *QUIET, "overwrite=true", *overrides]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"run failed: {' '.join(cmd)}\n{proc.stderr[-3000:]}")
    return json.loads((run_dir / "results.json").read_text())


def mean_std(values: list[float]) -> str:
    """Accuracies (fractions) as `mean +- std` in percent."""
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{100 * statistics.mean(values):.2f} +- {100 * std:.2f}"
