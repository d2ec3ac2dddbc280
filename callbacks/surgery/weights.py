"""Which tensors of a net the weight-level steps (pruning, weight sharing, binary / ternary) act on:
the one place that names them, so a new kind of layer is added here once.

- an nn.Linear / nn.Conv2d: its `weight`;
- a block-circulant layer (modules/nets/block_circulant.py): its `weight`, the blocks' vectors (zeroing one
  entry zeroes a circulant diagonal of its block);
- a recurrent layer: its input, recurrent and projection matrices, named as nn.LSTM names them
  (`weight_ih_l{k}`, `weight_hh_l{k}`, `weight_hr_l{k}`, any `_reverse`; the gate-shared layer's
  `weight_ih` / `weight_hh`; the step-by-step LSTMP's nn.LSTM names; the low-rank LSTM's factors
  `weight_ih_l0_a` / `_b`, ...), found by name so the nets of modules/nets need not be imported. Biases, embeddings and per-gate scales are left dense.

nn.LSTM computes from a list of its weights, which `setattr` and its forward refresh (the forward
whenever an attribute is no longer the tensor listed): it follows a pruned matrix (set by `setattr`
before each forward) and a `torch.nn.utils.parametrize` one (a new tensor at every read).
"""

from __future__ import annotations

from torch import nn
from torch.nn.utils import parametrize

from callbacks.surgery.folding import ORIG
from modules.nets.block_circulant import BlockCirculantConv2d, BlockCirculantLinear

__all__ = ["CIRCULANT", "LAYERS", "RECURRENT", "weight_targets", "weight_tensors"]

LAYERS = (nn.Linear, nn.Conv2d)  # layers whose one `weight` is a target
CIRCULANT = (BlockCirculantLinear, BlockCirculantConv2d)  # so is theirs: the vectors [p, q, b, *taps]
ONE_WEIGHT = (*LAYERS, *CIRCULANT)
RECURRENT = ("weight_ih", "weight_hh", "weight_hr")  # name prefixes of a recurrent layer's matrices


def weight_tensors(module: nn.Module) -> list[str]:
    """The names of `module`'s own target matrices (as a plain net names them), in a fixed order."""
    if isinstance(module, ONE_WEIGHT):
        return ["weight"]
    names = {name for name, p in module.named_parameters(recurse=False) if p.dim() == 2}
    if parametrize.is_parametrized(module):
        names |= set(module.parametrizations)
    plain = {name.removesuffix(ORIG) for name in names}
    return sorted(name for name in plain if name.startswith(RECURRENT))


def weight_targets(net: nn.Module) -> list[tuple[str, nn.Module, str]]:
    """(label, module, tensor) for every target of `net`, in module order: the label is the module's
    name for a Linear / Conv2d / block-circulant layer (as `layer_sparsity` names it), `<module>.<tensor>`
    for a recurrent matrix."""
    return [
        (name if isinstance(module, ONE_WEIGHT) else f"{name}.{tensor}", module, tensor)
        for name, module in net.named_modules()
        for tensor in weight_tensors(module)
    ]
