"""Dead hidden units: units of a Linear layer that the next Linear gives no nonzero weight.

After heavy pruning some units have no outgoing weight left; their output is multiplied by zeros, so
their incoming weights and bias cannot change the logits, and Deep Compression need not ship them
(callbacks/formats/dcz.py stores only the live units' biases). Only the pattern where that is exactly true
is handled: in an `nn.Sequential`, a Linear followed by the next Linear through per-unit, stateless
activations (ReLU, Dropout, ...). Anything else between them (BatchNorm's per-unit state, a
reshape, a residual add) breaks the chain and its units are left alone.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import parametrize, prune

__all__ = ["ELEMENTWISE", "dead", "feeds", "weight", "zero_dead_units"]

# per-unit, stateless: unit j's output depends only on unit j's input (and is finite for finite input)
ELEMENTWISE = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.GELU, nn.SiLU, nn.Tanh, nn.Sigmoid, nn.Dropout, nn.Identity)


def feeds(net: nn.Module) -> list[tuple[str, nn.Linear, str, nn.Linear]]:
    """(producer name, producer, consumer name, consumer): each Linear of an `nn.Sequential` in `net`
    whose outputs reach the next Linear only through ELEMENTWISE modules, in forward order."""
    names = {id(m): name for name, m in net.named_modules()}
    found = []
    for seq in (m for m in net.modules() if isinstance(m, nn.Sequential)):
        producer = None
        for child in seq.children():
            if isinstance(child, nn.Linear):
                if producer is not None and producer.out_features == child.in_features:
                    found.append((names[id(producer)], producer, names[id(child)], child))
                producer = child
            elif not isinstance(child, ELEMENTWISE):
                producer = None
    return found


def weight(module: nn.Module) -> torch.Tensor:
    """The weight as the net computes it (a pruning mask applied)."""
    if prune.is_pruned(module):
        return module.weight_orig * module.weight_mask
    return module.weight


def dead(consumer: nn.Linear) -> torch.Tensor:
    """Which of the consumer's input units it gives no nonzero weight (a bool per unit)."""
    return (weight(consumer) == 0).all(0)


@torch.no_grad()
def zero_dead_units(net: nn.Module) -> int:
    """Mask the incoming weights and zero the bias of every dead unit (from the output back, so a
    unit whose every consumer died dies too); the logits are unchanged. Returns the dead units."""
    count = 0
    for _, producer, _, consumer in reversed(feeds(net)):
        units = dead(consumer)
        if prune.is_pruned(producer):
            producer.weight_mask[units] = 0
        elif not parametrize.is_parametrized(producer):  # a parametrized weight is its step's to set
            producer.weight[units] = 0
        if producer.bias is not None:
            producer.bias[units] = 0
        count += int(units.sum())
    return count
