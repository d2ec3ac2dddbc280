"""`python -m recipes.summarize DIR` (console script `recipes-summarize`): one table of the jobs of a
multirun or sweep dir, from their results.json and .hydra/overrides.yaml files.

Prints the overrides that differ between jobs (those all jobs share once, above the table), the
monitored metric at each job's best checkpoint (a search's objective), the test metrics and the fit
seconds; then the best job and its overrides. Writes DIR/summary.csv (one row per job, every metric)
and DIR/objective.png (the objective over the jobs by number, i.e. launch order, and the best so far). A job dir
without results.json (a failed or unfinished trial) is listed as such.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf
from rich.console import Console
from rich.table import Table

from recipes.errors import RecipeError
from recipes.stages.results import FILE_NAME

__all__ = [
    "CSV_NAME",
    "PLOT_NAME",
    "Job",
    "best_job",
    "find_jobs",
    "main",
    "plot_objective",
    "rows",
    "summarize",
    "write_csv",
]

CSV_NAME, PLOT_NAME = "summary.csv", "objective.png"


@dataclass
class Job:
    """One job dir of the sweep: its overrides and, when it finished, its results."""

    path: Path
    overrides: list[str]
    results: dict[str, Any] = field(default_factory=dict)

    @property
    def objective(self) -> float | None:
        best = (self.results.get("monitor") or {}).get("best")
        return float(best) if best is not None else None


def _job_order(path: Path) -> tuple[int, str]:
    return (int(path.name), "") if path.name.isdigit() else (sys.maxsize, str(path))


def find_jobs(root: Path) -> list[Job]:
    """Every Hydra job dir under `root` (a dir with .hydra/overrides.yaml), in launch order. A results.json
    of a prerequisite (e.g. <job>/teacher/) is not a job of the sweep and is not listed."""
    jobs = []
    for overrides_file in root.rglob(".hydra/overrides.yaml"):
        path = overrides_file.parent.parent
        results_file = path / FILE_NAME
        results = json.loads(results_file.read_text()) if results_file.is_file() else {}
        jobs.append(Job(path, [str(o) for o in OmegaConf.load(overrides_file)], results))
    return sorted(jobs, key=lambda job: _job_order(job.path))


def best_job(jobs: list[Job]) -> Job | None:
    """The finished job with the best objective, in the direction its results.json names."""
    scored = [job for job in jobs if job.objective is not None]
    if not scored:
        return None
    mode = scored[0].results["monitor"]["mode"]
    return (max if mode == "max" else min)(scored, key=lambda job: job.objective)


def _varying(jobs: list[Job]) -> tuple[list[str], list[list[str]]]:
    """Overrides every job shares, and each job's own."""
    shared = set.intersection(*(set(job.overrides) for job in jobs))
    return [o for o in jobs[0].overrides if o in shared], [
        [o for o in job.overrides if o not in shared] for job in jobs
    ]


def rows(jobs: list[Job], root: Path) -> tuple[list[str], list[dict[str, Any]]]:
    """summary.csv's columns and rows: job, status, overrides, objective, every metric, fit_seconds."""
    _, own = _varying(jobs)
    metrics = sorted({name for job in jobs for name in job.results.get("metrics", {})})
    monitor = next((job.results["monitor"]["metric"] for job in jobs if job.results.get("monitor")), "objective")
    columns = ["job", "status", "overrides", f"{monitor} (best)", *metrics, "fit_seconds"]
    table = []
    for job, overrides in zip(jobs, own, strict=True):
        row = {
            "job": str(job.path.relative_to(root)),
            "status": "done" if job.results else "failed",
            "overrides": " ".join(overrides),
            f"{monitor} (best)": job.objective,
            "fit_seconds": job.results.get("fit_seconds"),
        }
        row.update({name: job.results.get("metrics", {}).get(name) for name in metrics})
        table.append(row)
    return columns, table


def write_csv(path: Path, columns: list[str], table: list[dict[str, Any]]) -> None:
    with open(path, "w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=columns)
        writer.writeheader()
        writer.writerows(table)


def plot_objective(path: Path, jobs: list[Job], name: str) -> None:
    """The objective of each job in launch order, failed jobs marked, and the best so far."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    best = best_job(jobs)
    mode = best.results["monitor"]["mode"] if best else "max"
    xs = [int(job.path.name) if job.path.name.isdigit() else i for i, job in enumerate(jobs)]  # the job number
    done = [(x, job.objective) for x, job in zip(xs, jobs, strict=True) if job.objective is not None]
    so_far, running = [], None
    for _, value in done:
        running = value if running is None else (max if mode == "max" else min)(running, value)
        so_far.append(running)
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot([x for x, _ in done], [v for _, v in done], "o", label=f"{name} of the job")
    ax.step([x for x, _ in done], so_far, where="post", label="best so far")
    failed = [x for x, job in zip(xs, jobs, strict=True) if job.objective is None]
    if failed and done:
        ax.plot(failed, [min(v for _, v in done)] * len(failed), "rx", label="failed")
    ax.set_xlabel("job (number: launch order; a search's trial number)")
    ax.set_ylabel(name)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def summarize(root: Path) -> Job | None:
    """Print the table and the best job; write summary.csv and objective.png in `root`."""
    if not root.is_dir():
        raise RecipeError(f"{root} is not a directory: give a multirun or sweep dir, e.g. outputs/multirun/<id>")
    jobs = find_jobs(root)
    if not jobs:
        raise RecipeError(f"no Hydra job dirs (with .hydra/overrides.yaml) under {root}: give a multirun or sweep dir")
    shared, _ = _varying(jobs)
    columns, table = rows(jobs, root)
    console = Console(width=max(Console().width, 160))
    view = Table(title=f"{len(jobs)} jobs in {root}" + (f" (all with: {' '.join(shared)})" if shared else ""))
    for column in columns:
        view.add_column(column, overflow="fold")
    for row in table:
        view.add_row(
            *("" if row[c] is None else f"{row[c]:.4f}" if isinstance(row[c], float) else str(row[c]) for c in columns)
        )
    console.print(view)
    write_csv(root / CSV_NAME, columns, table)
    plot_objective(root / PLOT_NAME, jobs, columns[3])
    best = best_job(jobs)
    if best is None:
        console.print("no job finished: there is no best job")
    else:
        console.print(
            f"best: {best.path.relative_to(root)} {columns[3]}={best.objective:.4f} "
            f"overrides: {' '.join(best.overrides)}"
        )
    console.print(f"wrote {root / CSV_NAME} and {root / PLOT_NAME}")
    return best


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="recipes-summarize", description=__doc__.splitlines()[0])
    parser.add_argument("dir", type=Path, help="a multirun or sweep dir (outputs/multirun/<id>, hydra.sweep.dir)")
    args = parser.parse_args(argv)
    try:
        summarize(args.dir)
    except RecipeError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
