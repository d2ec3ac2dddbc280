"""What the comparison and benchmark scripts share: launch one `python -m recipes.train` run as a user
would, the mean +- std of accuracies over seeds, and measures alternated after a dropped warm-up. (Not
named `runs`: the README's run folder, runs/, has that name.)"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

__all__ = ["QUIET", "alternated", "mean_std", "train"]

T = TypeVar("T")
QUIET = ["callbacks.progress_bar=null", "trainer.enable_progress_bar=false", "callbacks.model_summary=null"]


def train(run_dir: Path, *overrides: str, env: dict[str, str] | None = None) -> dict:
    """One `python -m recipes.train` run (in `env`, default this process's); its results.json (exits with
    the run's error if it failed). A script run again with the same --out trains its rows again:
    overwrite=true (conf/train.yaml)."""
    cmd = [sys.executable, "-m", "recipes.train", f"hydra.run.dir={run_dir}", *QUIET, "overwrite=true", *overrides]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        sys.exit(f"run failed: {' '.join(cmd)}\n{proc.stderr[-3000:]}")
    return json.loads((run_dir / "results.json").read_text())


def alternated(measures: dict[str, Callable[[], T]], repeats: int) -> dict[str, list[T]]:
    """Each measure run `repeats` times, alternating with the others (a, b, a, b, ...), after one dropped
    warm-up round (caches, allocator, file cache): the values of each."""
    values: dict[str, list[T]] = {name: [] for name in measures}
    for i in range(repeats + 1):
        for name, measure in measures.items():
            value = measure()
            if i:
                values[name].append(value)
    return values


def mean_std(values: list[float]) -> str:
    """Accuracies (fractions) as `mean +- std` in percent."""
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{100 * statistics.mean(values):.2f} +- {100 * std:.2f}"
