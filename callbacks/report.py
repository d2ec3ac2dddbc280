"""The compression report: what a model costs as it would ship, counted from its tensors.

A pruned net saved densely is no smaller, so zeros only count as savings under a sparse encoding:
here every tensor with zeros is stored as its nonzero values plus a 1-bit-per-weight mask (the
cheaper of that and the dense tensor); tensors without zeros are stored densely.
"""

from __future__ import annotations

import math
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
