"""The compression report: what a model costs as it would ship, counted from its tensors.

A pruned net saved densely is no smaller, so zeros only count as savings under a sparse encoding:
by default every tensor with zeros is stored as its nonzero values plus a 1-bit-per-weight mask (the
cheaper of that and the dense tensor); tensors without zeros are stored densely. A compression step
that changes how weights ship (int8, bit-packed, shared values) counts its tensors itself
(`CompressionStep.encoded_bytes`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from callbacks.step import CompressionStep

__all__ = [
    "ENCODING",
    "TRAINING_ONLY",
    "compression_report",
    "default_bytes",
    "layer_table",
    "model_size",
    "write_report",
]

ENCODING = "nonzero values at their dtype + 1-bit mask per weight (dense where smaller)"
TRAINING_ONLY = ("num_batches_tracked",)  # BatchNorm's step counter: state for training, not shipped


def default_bytes(tensor: torch.Tensor) -> int:
    """A tensor at its own dtype, stored as its nonzero values plus a 1-bit-per-element mask where
    that is smaller than storing it densely."""
    count, size = tensor.numel(), tensor.element_size()
    return min(count * size, int((tensor != 0).sum()) * size + math.ceil(count / 8))


def model_size(net: nn.Module, steps: Iterable[CompressionStep] = ()) -> dict[str, int]:
    """Parameter counts and bytes of `net` as it would ship (plain weights, masks already folded in):
    every tensor of its state dict but training-only counters, at the default encoding unless a
    compression step counts it its own way (the last step that does wins)."""
    params = sum(p.numel() for p in net.parameters())
    nonzero = sum(int((p != 0).sum()) for p in net.parameters())
    claimed: dict[str, int] = {}
    for step in steps:
        claimed.update(step.encoded_bytes(net))
    dense_bytes = compressed_bytes = 0
    for key, tensor in net.state_dict().items():
        if key.rpartition(".")[2] in TRAINING_ONLY:
            continue
        dense_bytes += tensor.numel() * tensor.element_size()
        compressed_bytes += claimed[key] if key in claimed else default_bytes(tensor)
    return {
        "params": params,
        "nonzero_params": nonzero,
        "dense_bytes": dense_bytes,
        "compressed_bytes": compressed_bytes,
    }


def compression_report(net: nn.Module, steps: dict[str, CompressionStep], dense: dict[str, int]) -> dict[str, Any]:
    """The compressed `net` against `dense`, the `model_size` of the net as the config built it:
    `dense_bytes` is what the uncompressed model ships, `compressed_bytes` what this one does."""
    size = model_size(net, steps.values())
    encodings = [ENCODING, *(f"{name}: {step.encoding}" for name, step in steps.items() if step.encoding)]
    return {
        "params": size["params"],
        "nonzero_params": size["nonzero_params"],
        "dense_params": dense["params"],
        "dense_bytes": dense["dense_bytes"],
        "compressed_bytes": size["compressed_bytes"],
        "encoding": "; ".join(encodings),
        "ratio": round(dense["dense_bytes"] / size["compressed_bytes"], 3),
        "steps": list(steps),
    }


def layer_table(net: nn.Module, prefix: str) -> list[dict[str, Any]]:
    """Per-layer parameter and nonzero counts of every Linear / Conv2d (masks already folded in),
    named as in the task's state dict (`prefix`: the shipped net's name in its task)."""
    rows = []
    for name, module in net.named_modules():
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            weights = [p for p in module.parameters(recurse=False)]
            count = sum(p.numel() for p in weights)
            nonzero = sum(int((p != 0).sum()) for p in weights)
            rows.append(
                {
                    "layer": f"{prefix}.{name}",
                    "type": type(module).__name__,
                    "params": count,
                    "nonzero": nonzero,
                    "sparsity": round(1 - nonzero / count, 4),
                }
            )
    return rows


def _value(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def _layer_order(name: str) -> tuple:
    return tuple((0, int(part), "") if part.isdigit() else (1, 0, part) for part in name.split("."))


def _row(name: str, before: dict[str, Any] | None, after: dict[str, Any] | None) -> str:
    """One report table row; a layer that a step replaced or removed has no `after`, a new one no `before`."""
    kind = (after or before)["type"]
    params_before = f"{before['params']:,}" if before else "(new)"
    if after is None:
        return f"| {name} | {kind} | {params_before} | (replaced) | | |"
    return (
        f"| {name} | {kind} | {params_before} | {after['params']:,} | {after['nonzero']:,} "
        f"| {100 * after['sparsity']:.1f}% |"
    )


def write_report(
    run_dir: Path, compression: dict[str, Any], before: list[dict[str, Any]], after: list[dict[str, Any]], metric: str
) -> Path:
    """report.md with a per-layer table and compression.png (parameters before / nonzero after, and
    sparsity, per layer) in `run_dir`; `metric`: the task's headline test metric, whose values the
    compression section holds as `<name>_before` / `<name>_after` (e.g. acc_before)."""
    short = metric.rpartition("/")[2]
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    before_by_name = {row["layer"]: row for row in before}
    after_by_name = {row["layer"]: row for row in after}
    # every layer of either net, a factored layer's parts right after it
    names = sorted({*before_by_name, *after_by_name}, key=_layer_order)
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(max(6, len(names) * 0.9), 6), sharex=True)
    x = range(len(names))
    top.bar(
        [i - 0.2 for i in x], [before_by_name.get(n, {}).get("nonzero", 0) for n in names], 0.4, label="nonzero before"
    )
    top.bar(
        [i + 0.2 for i in x], [after_by_name.get(n, {}).get("nonzero", 0) for n in names], 0.4, label="nonzero after"
    )
    top.set_ylabel("parameters")
    top.set_yscale("log")
    top.legend()
    bottom.bar(list(x), [100 * after_by_name.get(n, {}).get("sparsity", 0) for n in names], color="tab:red")
    bottom.set_ylabel("sparsity after (%)")
    bottom.set_ylim(0, 100)
    bottom.set_xticks(list(x), names, rotation=45, ha="right")
    fig.suptitle(f"compression {' + '.join(compression['steps'])}: {compression['ratio']}x")
    fig.tight_layout()
    fig.savefig(run_dir / "compression.png", dpi=100)
    plt.close(fig)
    lines = [
        f"# Compression report: {' + '.join(compression['steps'])}",
        "",
        f"- parameters: {compression['params']:,} ({compression['nonzero_params']:,} nonzero), "
        f"{compression['dense_params']:,} uncompressed",
        f"- bytes: {compression['dense_bytes']:,} dense, {compression['compressed_bytes']:,} compressed "
        f"({compression['ratio']}x; encoding: {compression['encoding']})",
        f"- {metric}: {_value(compression.get(f'{short}_before'))} before compression, "
        f"{_value(compression.get(f'{short}_after'))} after",
        "",
        "| layer | type | params before | params after | nonzero after | sparsity after |",
        "|---|---|---|---|---|---|",
        *(_row(name, before_by_name.get(name), after_by_name.get(name)) for name in names),
        "",
        f"{metric} of the net as each step found it and as the next step (or the end) found it:",
        "",
        *(
            f"- {step['step']}: {_value(step.get(f'{short}_before'))} before, {_value(step.get(f'{short}_after'))} after"
            for step in compression.get("per_step", [])
        ),
        "",
        "![per-layer parameters and sparsity](compression.png)",
        "",
    ]
    path = run_dir / "report.md"
    path.write_text("\n".join(lines))
    return path
