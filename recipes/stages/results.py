"""results.json: one schema for every run (the README's results.json section), written atomically by rank 0 only, and the
one-screen summary printed at the end of a run."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.table import Table
from torch.utils.data import DistributedSampler

from recipes.assembly.thread_count import ThreadCount
from recipes.strategies.contract import recipe_strategy

__all__ = [
    "FILE_NAME",
    "finite",
    "padded_samples_per_epoch",
    "parallel_results",
    "print_summary",
    "relative",
    "run_results",
    "strict_json",
    "threads_used",
    "write_results",
]

FILE_NAME = "results.json"


def relative(path: str | Path, run_dir: Path) -> str:
    """A path as stored in results.json: relative to the run dir when inside it."""
    path = Path(path).resolve()
    try:
        return str(path.relative_to(run_dir.resolve()))
    except ValueError:
        return str(path)


def finite(value: Any) -> Any:
    """`value` with every NaN and infinity (at any depth) turned into None."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: finite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(item) for item in value]
    return value


def strict_json(value: Any, **kwargs: Any) -> str:
    """JSON that every parser accepts. Python writes NaN and Infinity, which JSON does not have, and
    strict parsers (JavaScript's JSON.parse, jq, Go, Rust) reject the whole file. A non-finite number
    becomes null, JSON's "no value": a consumer keeps a numeric field numeric or missing, where a
    string such as "nan" would change its type and break comparisons and arithmetic."""
    return json.dumps(finite(value), allow_nan=False, **kwargs)


def run_results(
    choices: dict[str, Any],
    run_dir: Path,
    seed: int,
    metrics: dict[str, float],
    fit_seconds: float,
    parallel: dict[str, Any],
    checkpoint: str | None,
    monitor: dict[str, Any],
    task_record: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """results.json's sections that every run has (compression and export are added when they apply);
    `task_record`: the sections the task adds about its own run (Task.run_record)."""
    results: dict[str, Any] = {
        "recipe": choices.get("recipe"),
        "task": choices.get("task"),
        "run_dir": relative(run_dir, Path.cwd()),
        "seed": seed,
        "metrics": metrics,
        "fit_seconds": round(fit_seconds, 3),
        "parallel": parallel,
    }
    if checkpoint:
        results["checkpoint"] = relative(checkpoint, run_dir)
    if monitor:
        results["monitor"] = monitor
    results.update(task_record or {})
    return results


def write_results(run_dir: Path, results: dict[str, Any]) -> Path:
    """Write results.json via a temporary file and a rename, so a reader never sees half a file."""
    target = run_dir / FILE_NAME
    tmp = target.with_suffix(".json.tmp")
    tmp.write_text(strict_json(results, indent=2, sort_keys=False) + "\n")
    os.replace(tmp, target)
    return target


def parallel_results(trainer: Any, batch_size: int, fit_seconds: float) -> dict[str, Any]:
    """results.json's `parallel` section: how the replicas cooperated and what it cost, measured on
    this rank (bytes come from the strategy contract's `comm_bytes` counter; absent when it keeps none)."""
    strategy = recipe_strategy(trainer.strategy)
    extra = strategy.parallel_extra  # e.g. strategy=async: per-worker step counts
    worker_steps = extra.get("worker_steps")  # async: workers step on their own, not together
    steps = sum(worker_steps) if worker_steps else trainer.global_step  # async: updates to the shared weights
    # samples per step: one batch per update (async), else one per data-parallel replica (a pipeline's
    # ranks share each batch)
    replicas = 1 if worker_steps else (trainer.distributed_sampler_kwargs or {}).get("num_replicas", 1)
    samples = steps * batch_size * replicas * trainer.accumulate_grad_batches
    section: dict[str, Any] = {
        "strategy": type(trainer.strategy).__name__,
        "world_size": trainer.world_size,
        "steps": steps,
        "samples_per_second": round(samples / fit_seconds, 1) if fit_seconds > 0 else None,
        "threads": threads_used(trainer),
    }
    section["padded_samples_per_epoch"] = padded_samples_per_epoch(trainer)
    section.update(extra)
    if trainer.world_size == 1:
        section["comm_bytes_per_step"] = 0
    elif strategy.comm_bytes is not None and steps:
        section["comm_bytes_per_step"] = round(strategy.comm_bytes / steps, 1)
    return section


def threads_used(trainer: Any) -> int:
    """The intra-op threads per training process: ThreadCount's count, chosen again here when the fit ran
    in worker processes (strategy=async); without the callback, this process's."""
    counter = next((c for c in trainer.callbacks if isinstance(c, ThreadCount)), None)
    if counter is None:
        return torch.get_num_threads()
    return counter.count if counter.count is not None else counter.choose(trainer, trainer.lightning_module)[0]


def padded_samples_per_epoch(trainer: Any) -> int:
    """Samples the training sampler repeats each epoch to give every replica as many: a DistributedSampler
    (without drop_last) pads the split to `num_replicas * ceil(n / num_replicas)` with samples from its start,
    so DDP equals one process with the global batch only when this is 0 (docs/parallel.md). 0 for one
    process, and for strategies whose ranks share each batch (pipeline)."""
    loaders = trainer.train_dataloader
    if isinstance(loaders, dict):
        loaders = list(loaders.values())
    padded = 0
    for loader in loaders if isinstance(loaders, list | tuple) else [loaders]:
        sampler = getattr(loader, "sampler", None)
        if isinstance(sampler, DistributedSampler) and not sampler.drop_last:
            length = getattr(sampler, "length", None)  # recipes/data/mixing.py's sampler: its stream, no dataset
            padded += sampler.total_size - (len(sampler.dataset) if length is None else length)
    return padded


def print_summary(results: dict[str, Any], title: str = "run summary") -> None:
    """Metrics in a table, then the paths (checkpoint, run dir, exported files) whole, one line each:
    a path wider than its table cell would be cut with "..." (narrow terminals, and 80 columns when
    the output is a file or a pipe), and a cut path cannot be copied."""
    heading = f"{title}: recipe={results.get('recipe')} task={results.get('task')}"
    table = Table(title=heading, show_header=False, min_width=len(heading))  # a title wider than the rows stays whole
    for name, value in sorted(results.get("metrics", {}).items()):
        table.add_row(name, f"{value:.4f}" if isinstance(value, float) else str(value))
    monitor = results.get("monitor")
    if monitor:  # the metric that picked the checkpoint
        table.add_row(f"best {monitor['metric']} ({monitor['mode']})", f"{monitor['best']:.4f}")
    if "fit_seconds" in results:
        table.add_row("fit_seconds", str(results["fit_seconds"]))
    export = results.get("export")
    if export:
        table.add_row(
            "export parity",
            f"max |diff| {export['parity_max_abs_diff']:.1e}, top-1 agreement {export['top1_agreement']:.4f}",
        )
    Console().print(table)
    paths = {key: str(results[key]) for key in ("checkpoint", "run_dir") if key in results}
    if export:
        paths["export"] = ", ".join(export[f] for f in ("onnx", "program") if f in export)
    for key, value in paths.items():
        print(f"{key}: {value}", flush=True)
