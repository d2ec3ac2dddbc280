"""Structural edits of a net during training (layers factored or shrunk), kept replayable.

A checkpoint of a restructured net no longer fits the net its config builds, so every edit is
recorded on the net (`net.structure_edits`, plain data) and stored in the checkpoint's `recipe`
entry; `replay` applies the same edits to a freshly built net before its weights are loaded
(recipes.evaluate, a resumed run, a teacher or fine-tuning start). After an edit mid-fit,
`rebuild_optimizers` gives Lightning fresh optimizers over the new parameters, with the LR
schedule's progress kept.

This module replays the shape edits it makes (factor, resize, circulant, remove). An edit of another kind builds on
it (int8 quantization, callbacks/surgery/quantize.py, instruments the layers the shape edits
leave), so this module cannot import it: the caller of `replay` passes the function of each such
kind (`late`). An explicit argument rather than a registry that the other module fills when it is
imported: a checkpoint loaded in a fresh process (recipes.evaluate, Task.load_from_checkpoint)
replays its edits whatever was imported before. The one caller is
recipes.checkpointing.format.restore_structure.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Protocol, runtime_checkable

import lightning.pytorch as pl
import torch
from lightning.pytorch.strategies import DDPStrategy
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from modules.nets.block_circulant import BlockCirculantConv2d, BlockCirculantLinear, check_block
from modules.nets.lowrank_lstm import MATRICES, LowRankLSTM

__all__ = [
    "ATTR",
    "LateEdits",
    "Restructurable",
    "applied",
    "check_edit",
    "circulant",
    "edits",
    "factored",
    "rebuild_optimizers",
    "record",
    "remove_modules",
    "replay",
    "resize",
    "set_module",
    "shapes_of",
]

ATTR = "structure_edits"
SHAPE_EDITS = ("factor", "resize", "circulant", "remove")
# Kind -> the function that applies (and records) an edit of that kind to a net with its shape edits done.
LateEdits = Mapping[str, Callable[[nn.Module], Any]]


@runtime_checkable
class Restructurable(Protocol):
    """A training strategy that holds state over the net's tensors beyond the DDP wrapper (e.g. model
    averaging's averager, which holds the old buffers): told after an edit changed layer shapes and the
    wrapper was rebuilt. The recipes' strategies declare it (recipes.strategies.contract)."""

    def on_restructure(self) -> None: ...


def edits(net: nn.Module) -> list[dict[str, Any]]:
    """The structural edits applied to `net` so far, oldest first."""
    return list(getattr(net, ATTR, []))


def record(net: nn.Module, edit: dict[str, Any]) -> None:
    object.__setattr__(net, ATTR, [*edits(net), edit])


def applied(net: nn.Module, step: str) -> int:
    """How many edits the compression step `step` has made to `net` (so a resumed run skips them)."""
    return sum(1 for edit in edits(net) if edit.get("step") == step)


def set_module(net: nn.Module, name: str, module: nn.Module) -> None:
    """Replace the submodule at dotted path `name`."""
    parent_name, _, child = name.rpartition(".")
    setattr(net.get_submodule(parent_name) if parent_name else net, child, module)


def factored(layer: nn.Module, rank: int | Mapping[str, int]) -> nn.Module:
    """`layer` (Linear or Conv2d) as two layers through a `rank`-wide bottleneck, weights from its
    truncated SVD `W ~ (U_k S_k^1/2)(S_k^1/2 V_k^T)`: Linear(n->k, no bias) -> Linear(k->m); a
    Conv2d becomes a kxk conv with `rank` filters (same stride/padding) -> 1x1 conv to the outputs.
    An nn.LSTM (`rank`: a rank per matrix, e.g. `{"weight_hh_l0": 8}`) becomes a LowRankLSTM."""
    if isinstance(layer, nn.LSTM):
        return LowRankLSTM.from_lstm(layer, rank)  # type: ignore[arg-type]
    weight = layer.weight.detach()
    matrix = weight.reshape(weight.shape[0], -1)  # (out, in * kh * kw)
    u, s, vh = torch.linalg.svd(matrix, full_matrices=False)
    root = s[:rank].sqrt()
    first_w, second_w = root[:, None] * vh[:rank], u[:, :rank] * root[None, :]
    has_bias = layer.bias is not None
    if isinstance(layer, nn.Linear):
        first = nn.Linear(layer.in_features, rank, bias=False)
        second = nn.Linear(rank, layer.out_features, bias=has_bias)
    else:
        first = nn.Conv2d(
            layer.in_channels,
            rank,
            layer.kernel_size,
            layer.stride,
            layer.padding,
            layer.dilation,
            bias=False,
            padding_mode=layer.padding_mode,
        )
        second = nn.Conv2d(rank, layer.out_channels, 1, bias=has_bias)
    with torch.no_grad():
        first.weight.copy_(first_w.reshape(first.weight.shape))
        second.weight.copy_(second_w.reshape(second.weight.shape))
        if has_bias:
            second.bias.copy_(layer.bias)
    return nn.Sequential(first, second).to(device=weight.device, dtype=weight.dtype)


def circulant(layer: nn.Module, block: int) -> nn.Module:
    """`layer` (Linear, or a square-kernel Conv2d) as the nearest block-circulant layer with `block` x
    `block` circulant blocks (each block's entries averaged along its circulant diagonals)."""
    if isinstance(layer, nn.Linear):
        return BlockCirculantLinear.from_linear(layer, block)
    return BlockCirculantConv2d.from_conv(layer, block)


def remove_modules(net: nn.Module, names: list[str]) -> None:
    """Delete the submodules at the dotted paths `names` from their parents (the other modules keep their
    names, so a checkpoint's keys still match)."""
    for name in names:
        parent_name, _, child = name.rpartition(".")
        delattr(net.get_submodule(parent_name) if parent_name else net, child)


# Module attributes that describe a layer's width, by the parameter / buffer dim they follow.
_WIDTH_ATTRS = {
    nn.Linear: {"out_features": ("weight", 0), "in_features": ("weight", 1)},
    nn.Conv2d: {"out_channels": ("weight", 0), "in_channels": ("weight", 1)},
    nn.BatchNorm1d: {"num_features": ("running_mean", 0)},
    nn.BatchNorm2d: {"num_features": ("running_mean", 0)},
}


def resize(net: nn.Module, shapes: dict[str, list[int]]) -> None:
    """Give the parameters and buffers named in `shapes` those shapes (fresh, uninitialized values:
    weights are loaded next) and update the layers' width attributes to match."""
    for key, shape in shapes.items():
        module_name, _, attr = key.rpartition(".")
        module = net.get_submodule(module_name)
        old = getattr(module, attr)
        new = torch.zeros(shape, dtype=old.dtype, device=old.device)
        if isinstance(old, nn.Parameter):
            setattr(module, attr, nn.Parameter(new, requires_grad=old.requires_grad))
        else:
            module.register_buffer(attr, new)
        for width, (source, dim) in _WIDTH_ATTRS.get(type(module), {}).items():
            if source == attr:
                setattr(module, width, shape[dim])


def shapes_of(net: nn.Module) -> dict[str, list[int]]:
    """Every parameter's and floating buffer's shape (what `resize` replays)."""
    state = net.state_dict()
    return {k: list(v.shape) for k, v in state.items() if v.is_floating_point()}


def replay(net: nn.Module, recorded: list[dict[str, Any]], late: LateEdits) -> nn.Module:
    """Apply recorded edits to a freshly built `net` (whose weights are loaded afterwards): the shape
    edits in their order, then each kind of `late` that the record holds, once, by its function (it
    builds on the layers the shape edits leave, so it comes last whatever its place in the record).
    The record comes from a checkpoint, so each edit is checked first (`check_edit`): a malformed
    one is a ValueError naming it, never a huge tensor."""
    if not isinstance(recorded, list):
        raise ValueError(f"the structure record is a {type(recorded).__name__}, not a list of edits")
    for index, edit in enumerate(recorded):
        check_edit(net, edit, index, late)
        if edit["kind"] in late:
            continue
        if edit["kind"] == "factor":
            for name, rank in edit["ranks"].items():
                set_module(net, name, factored(net.get_submodule(name), rank))
        elif edit["kind"] == "circulant":
            for name, block in edit["blocks"].items():
                set_module(net, name, circulant(net.get_submodule(name), block))
        elif edit["kind"] == "remove":
            remove_modules(net, edit["modules"])
        else:
            current = shapes_of(net)
            resize(net, {k: v for k, v in edit["shapes"].items() if current.get(k) != v})
        record(net, edit)
    for kind, apply in late.items():
        if any(edit["kind"] == kind for edit in recorded):
            apply(net)
    return net


def check_edit(net: nn.Module, edit: Any, index: int, late: LateEdits) -> None:
    """ValueError unless `edit` is one the compression steps record (a shape edit or a kind of `late`),
    and fits `net` as the edits before it left it: a factor rank from 1 to the layer's full rank, of a
    Linear or Conv2d (of an LSTM: a rank per input / recurrent matrix); a resize that names existing
    tensors of the same number of dims and never grows one (steps only shrink layers)."""
    where = f"edit {index}"
    kinds = (*SHAPE_EDITS, *late)
    if not isinstance(edit, dict) or edit.get("kind") not in kinds:
        kind = edit.get("kind") if isinstance(edit, dict) else edit
        raise ValueError(f"{where} is {kind!r}, not a {', '.join(kinds[:-1])} or {kinds[-1]} edit")
    if edit["kind"] == "factor":
        ranks = edit.get("ranks")
        if not isinstance(ranks, dict):
            raise ValueError(f"{where} (factor) has no ranks mapping")
        for name, rank in ranks.items():
            layer = _submodule(net, name, where)
            if isinstance(layer, nn.LSTM):
                _check_lstm_ranks(layer, rank, f"{where} ({name!r})")
                continue
            if not isinstance(layer, (nn.Linear, nn.Conv2d)):
                raise ValueError(f"{where} factors {name!r}, a {type(layer).__name__}, not a Linear, Conv2d or LSTM")
            full = min(layer.weight.shape[0], layer.weight[0].numel())
            if type(rank) is not int or not 1 <= rank <= full:
                raise ValueError(f"{where} gives {name!r} rank {rank!r}, outside 1..{full}")
    elif edit["kind"] == "circulant":
        blocks = edit.get("blocks")
        if not isinstance(blocks, dict):
            raise ValueError(f"{where} (circulant) has no blocks mapping")
        for name, block in blocks.items():
            layer = _submodule(net, name, where)
            if not isinstance(layer, (nn.Linear, nn.Conv2d)):
                raise ValueError(f"{where} makes {name!r}, a {type(layer).__name__}, circulant: not a Linear or Conv2d")
            out_size, in_size = layer.weight.shape[:2]
            if type(block) is not int:
                raise ValueError(f"{where} gives {name!r} block {block!r}, not an integer")
            check_block(block, in_size, out_size, f"{where} ({name!r}) block")
    elif edit["kind"] == "remove":
        names = edit.get("modules")
        if not isinstance(names, list) or not names:
            raise ValueError(f"{where} (remove) has no list of modules")
        for name in names:
            if not isinstance(name, str) or not name:
                raise ValueError(f"{where} removes {name!r}, which is not a layer of the net")
            _submodule(net, name, where)
    elif edit["kind"] == "resize":
        shapes, current = edit.get("shapes"), shapes_of(net)
        if not isinstance(shapes, dict):
            raise ValueError(f"{where} (resize) has no shapes mapping")
        for key, shape in shapes.items():
            old = current.get(key)
            if old is None:
                raise ValueError(f"{where} resizes {key!r}, which the net does not have")
            if (
                not isinstance(shape, list)
                or len(shape) != len(old)
                or not all(type(n) is int and 0 <= n <= m for n, m in zip(shape, old))
            ):
                raise ValueError(f"{where} resizes {key!r} from {old} to {shape!r}, which is not a shrink of it")


def _check_lstm_ranks(lstm: nn.LSTM, ranks: Any, where: str) -> None:
    """ValueError unless `ranks` maps some of the LSTM's input / recurrent matrices to ranks in 1..full."""
    if not isinstance(ranks, dict) or not ranks:
        raise ValueError(f"{where} factors an LSTM without a mapping of its matrices to ranks")
    matrices = {f"{matrix}_l{k}" for matrix in MATRICES for k in range(lstm.num_layers)}
    for name, rank in ranks.items():
        if name not in matrices:
            raise ValueError(f"{where} factors {name!r}, not an input or recurrent matrix of the LSTM")
        full = min(getattr(lstm, name).shape)
        if type(rank) is not int or not 1 <= rank <= full:
            raise ValueError(f"{where} gives {name!r} rank {rank!r}, outside 1..{full}")


def _submodule(net: nn.Module, name: Any, where: str) -> nn.Module:
    try:
        return net.get_submodule(name)
    except (AttributeError, TypeError):
        raise ValueError(f"{where} names {name!r}, which is not a layer of the net") from None


def rebuild_optimizers(trainer: pl.Trainer) -> None:
    """A DDP wrapper over the edited net (when there is one) and new optimizers over the edited net's parameters, keeping each LR scheduler's progress (the
    old one's state, e.g. the cosine step count and current LR, is loaded into the new one). Moment
    estimates of the old parameters are dropped: their shapes changed."""
    strategy = trainer.strategy
    if isinstance(strategy.model, DistributedDataParallel) and isinstance(strategy, DDPStrategy):
        # DDP holds the old parameters (and their gradient buckets): wrap the edited module anew
        strategy.model = strategy.lightning_module
        strategy.configure_ddp()
        if isinstance(strategy, Restructurable):  # e.g. model averaging: its averager holds the old buffers
            strategy.on_restructure()
    old_schedulers = [config.scheduler.state_dict() for config in strategy.lr_scheduler_configs]
    old_lrs = [[group["lr"] for group in opt.param_groups] for opt in strategy.optimizers]
    strategy.setup_optimizers(trainer)
    for config, state in zip(strategy.lr_scheduler_configs, old_schedulers):
        config.scheduler.load_state_dict(state)
    for optimizer, lrs in zip(strategy.optimizers, old_lrs):
        for group, lr in zip(optimizer.param_groups, lrs):
            group["lr"] = lr
