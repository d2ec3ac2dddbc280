"""How compression that is still training looks on a net and in its checkpoint, and the plain net it
stands for: the one place that knows the layouts.

- a `torch.nn.utils.prune` mask: the parameter `<x>_orig` and the buffer `<x>_mask` (prune's
  documented layout), the weight `<x>` their product;
- a `torch.nn.utils.parametrize` weight (binary, ternary, shared values; callbacks/parametrized.py),
  of a layer or of an LSTM's matrix: its computed value written into every checkpoint as `<layer>.parametrizations.<x>.0.folded`,
  beside the latent weight and the parametrization's own state (scales, centroids), which are
  training state only.

`fold_masks` turns a state dict with either into the one a plain net loads (recipes.evaluate, a
teacher, a fine-tuning start); `snapshot` does the same to a net.

nn.LSTM keeps a list of its weights, refreshed by its forward; with a parametrized matrix the list
holds the last forward's computed tensors, which `copy.deepcopy` refuses (they have autograd history):
`settle_recurrent` stores their values without it (the next forward computes them again).
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize, prune

__all__ = [
    "FOLDED",
    "MASK",
    "ORIG",
    "fold_masks",
    "fold_parametrizations",
    "pruned_names",
    "remove_masks",
    "settle_recurrent",
    "snapshot",
]

MASK, ORIG = "_mask", "_orig"  # prune's suffixes: `<x>_orig * <x>_mask` is `<x>`
FOLDED = "folded"  # the parametrization buffer that holds the computed weight in a checkpoint
_PARAMETRIZED = ".parametrizations."  # <layer>.parametrizations.<x>.<index>.<its state>
_FOLDED_KEY = f".0.{FOLDED}"


def pruned_names(module: nn.Module) -> list[str]:
    """The names of `module`'s own tensors that `torch.nn.utils.prune` masks."""
    parameters = {name for name, _ in module.named_parameters(recurse=False)}
    if parametrize.is_parametrized(module):  # a parametrized `<name>_orig` (weight sharing after pruning)
        parameters |= set(module.parametrizations)
    return [
        name[: -len(MASK)]
        for name, _ in module.named_buffers(recurse=False)
        if name.endswith(MASK) and name[: -len(MASK)] + ORIG in parameters
    ]


def remove_masks(net: nn.Module) -> nn.Module:
    """Fold every `torch.nn.utils.prune` mask into its weight, leaving plain parameters (the same
    Parameter objects, so an optimizer over them stays valid)."""
    for module in net.modules():
        for name in pruned_names(module):
            prune.remove(module, name)
    return net


def settle_recurrent(net: nn.Module) -> nn.Module:
    """Every nn.LSTM / GRU / RNN of `net` with its weight list read again, without autograd history."""
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, nn.RNNBase):
                module._init_flat_weights()  # nn.RNNBase's own refresh (as `.to()` does)
    return net


def snapshot(net: nn.Module) -> nn.Module:
    """A detached copy of `net` as a plain net would load it (pruning masks and parametrizations
    folded in): what the compression report tests as the model before a step."""
    for module in net.modules():  # a pruned weight is recomputed by each forward: drop its autograd
        for name in pruned_names(module):  # history so that deepcopy can copy it
            setattr(module, name, getattr(module, name).detach())
    plain = copy.deepcopy(settle_recurrent(net))
    for module in plain.modules():  # a parametrized weight (binary, ternary, shared values) as computed
        if parametrize.is_parametrized(module):
            # deepcopy shares the injected Parametrized<Layer> class, which removal edits: give the copy its own
            cls = type(module)
            module.__class__ = type(cls.__name__, cls.__bases__, dict(cls.__dict__))
            for name in list(module.parametrizations):
                parametrize.remove_parametrizations(module, name, leave_parametrized=True)
    return settle_recurrent(remove_masks(plain)).requires_grad_(False)


def fold_masks(state_dict: dict[str, Any]) -> dict[str, Any]:
    """A state dict with `torch.nn.utils.prune` masks applied (`x_orig * x_mask` becomes `x`) and
    parametrizations folded (`fold_parametrizations`): what a plain net loads from a checkpoint
    written mid-pruning or mid-binarization."""
    state_dict = fold_parametrizations(state_dict)
    folded = {}
    for key, value in state_dict.items():
        if key.endswith(MASK) and key[: -len(MASK)] + ORIG in state_dict:
            continue
        if key.endswith(ORIG) and key[: -len(ORIG)] + MASK in state_dict:
            base = key[: -len(ORIG)]
            folded[base] = value * state_dict[base + MASK]
        else:
            folded[key] = value
    return folded


def fold_parametrizations(state_dict: dict[str, Any]) -> dict[str, Any]:
    """A state dict with each `torch.nn.utils.parametrize` weight that carries its computed value
    (`<layer>.parametrizations.<x>.0.folded`) as the plain `<layer>.<x>`, without the latent weight
    and the parametrization's own state."""
    folded_keys = {key for key in state_dict if _PARAMETRIZED in key and key.endswith(_FOLDED_KEY)}
    if not folded_keys:
        return state_dict
    bases = {key.rsplit(_FOLDED_KEY, 1)[0] for key in folded_keys}  # <layer>.parametrizations.<x>
    result = {}
    for key, value in state_dict.items():
        base = next((b for b in bases if key.startswith(b + ".")), None)
        if base is None:
            result[key] = value
        elif key == base + _FOLDED_KEY:
            layer, _, tensor = base.rpartition(_PARAMETRIZED)
            result[f"{layer}.{tensor}"] = value
    return result
