"""The compression report: what a model costs as it would ship, counted from its tensors.

A pruned net saved densely is no smaller, so zeros only count as savings under a sparse encoding:
here every tensor with zeros is stored as its nonzero values plus a 1-bit-per-weight mask (the
cheaper of that and the dense tensor); tensors without zeros are stored densely.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from torch import nn

ENCODING = "nonzero values at their dtype + 1-bit mask per weight (dense where smaller)"


def compression_report(net: nn.Module, steps: list[str]) -> dict[str, Any]:
    """Parameter counts and bytes of `net` (plain weights, masks already folded in)."""
    params = sum(p.numel() for p in net.parameters())
    nonzero = sum(int((p != 0).sum()) for p in net.parameters())
    dense_bytes = compressed_bytes = 0
    for tensor in net.state_dict().values():  # what ships: parameters and float buffers (BatchNorm)
        if not tensor.is_floating_point():
            continue
        count, size = tensor.numel(), tensor.element_size()
        dense_bytes += count * size
        compressed_bytes += min(count * size, int((tensor != 0).sum()) * size + math.ceil(count / 8))
    return {
        "params": params,
        "nonzero_params": nonzero,
        "dense_bytes": dense_bytes,
        "compressed_bytes": compressed_bytes,
        "encoding": ENCODING,
        "ratio": round(dense_bytes / compressed_bytes, 3),
        "steps": steps,
    }


def layer_table(net: nn.Module) -> list[dict[str, Any]]:
    """Per-layer parameter and nonzero counts of every Linear / Conv2d (masks already folded in)."""
    rows = []
    for name, module in net.named_modules():
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            weights = [p for p in module.parameters(recurse=False)]
            count = sum(p.numel() for p in weights)
            nonzero = sum(int((p != 0).sum()) for p in weights)
            rows.append({"layer": f"net.{name}", "type": type(module).__name__, "params": count, "nonzero": nonzero,
                         "sparsity": round(1 - nonzero / count, 4)})
    return rows


def _percent(acc: float | None) -> str:
    return "n/a" if acc is None else f"{100 * acc:.2f}%"


def write_report(run_dir: Path, compression: dict[str, Any], before: list[dict[str, Any]],
                 after: list[dict[str, Any]]) -> Path:
    """report.md with a per-layer table and compression.png (parameters before / nonzero after, and
    sparsity, per layer) in `run_dir`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [row["layer"] for row in after]
    before_by_name = {row["layer"]: row for row in before}
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(max(6, len(names) * 0.9), 6), sharex=True)
    x = range(len(names))
    top.bar([i - 0.2 for i in x], [before_by_name.get(n, {}).get("nonzero", 0) for n in names], 0.4,
            label="nonzero before")
    top.bar([i + 0.2 for i in x], [row["nonzero"] for row in after], 0.4, label="nonzero after")
    top.set_ylabel("parameters")
    top.set_yscale("log")
    top.legend()
    bottom.bar(list(x), [100 * row["sparsity"] for row in after], color="tab:red")
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
        f"- parameters: {compression['params']:,} ({compression['nonzero_params']:,} nonzero)",
        f"- bytes: {compression['dense_bytes']:,} dense, {compression['compressed_bytes']:,} compressed "
        f"({compression['ratio']}x; encoding: {compression['encoding']})",
        f"- test accuracy: {_percent(compression.get('acc_before'))} before compression, "
        f"{_percent(compression['acc_after'])} after",
        "",
        "| layer | type | params | nonzero before | nonzero after | sparsity after |",
        "|---|---|---|---|---|---|",
        *(f"| {row['layer']} | {row['type']} | {row['params']:,} | {before_by_name.get(row['layer'], {}).get('nonzero', 'n/a')} "
          f"| {row['nonzero']} | {100 * row['sparsity']:.1f}% |" for row in after),
        "",
        "![per-layer parameters and sparsity](compression.png)",
        "",
    ]
    path = run_dir / "report.md"
    path.write_text("\n".join(lines))
    return path
