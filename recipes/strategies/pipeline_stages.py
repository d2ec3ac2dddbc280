"""The parts of pipeline parallelism that are plain torch, not Lightning: where the net is cut into
stages, how every rank gets the other stages' current weights (for validation and checkpoints), and
how the stage-local optimizer states map to and from the single-process layout (so a pipeline
checkpoint resumes on one process and back)."""

from __future__ import annotations

import itertools
from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

__all__ = [
    "broadcast_tensors",
    "check_split_points",
    "default_split_points",
    "full_layout",
    "gather_optimizer_state",
    "gather_stages",
    "local_optimizer_state",
    "stage_block",
    "stage_bounds",
    "stage_tensors",
]


def check_split_points(split_points: Sequence[int] | None) -> list[int] | None:
    """The config value as a list, or ValueError when it cannot be cut points of any net."""
    if split_points is None:
        return None
    points = list(split_points)
    if (
        not all(isinstance(p, int) and not isinstance(p, bool) for p in points)
        or not points
        or points[0] < 1
        or any(b <= a for a, b in zip(points, points[1:]))
    ):
        raise ValueError(
            f"strategy.split_points={points} must be strictly increasing child indices >= 1 "
            "(where a new stage starts), one per rank after the first, e.g. strategy.split_points=[3]"
        )
    return points


def default_split_points(net: nn.Sequential, stages: int) -> list[int]:
    """Cuts that make the largest stage as small as possible: by parameter count, then by block count;
    ties go to the earliest cuts. An exhaustive search: the nets have few top-level blocks (3 to 10)."""
    sizes = [sum(p.numel() for p in child.parameters()) for child in net]

    def largest(points: tuple[int, ...]) -> tuple[int, int]:
        bounds = list(zip([0, *points], [*points, len(sizes)]))
        return max(sum(sizes[a:b]) for a, b in bounds), max(b - a for a, b in bounds)

    return list(min(itertools.combinations(range(1, len(sizes)), stages - 1), key=largest))


def stage_bounds(net: nn.Sequential, split_points: list[int] | None, stages: int) -> list[tuple[int, int]]:
    """(start, end) child indices of each stage; ValueError when the points do not fit this net."""
    children = len(net)
    if stages > children:
        raise ValueError(
            f"strategy=pipeline with {stages} ranks needs a net of at least {stages} top-level blocks; "
            f"this one has {children}: use fewer ranks (trainer.devices)"
        )
    points = default_split_points(net, stages) if split_points is None else split_points
    if len(points) != stages - 1 or (points and points[-1] >= children):
        raise ValueError(
            f"strategy.split_points={points} must hold {stages - 1} indices (one per rank after the "
            f"first) below {children}, the net's number of top-level blocks, e.g. "
            f"strategy.split_points={default_split_points(net, stages)}"
        )
    starts = [0, *points]
    return list(zip(starts, [*points, children]))


def broadcast_tensors(tensors: Iterable[torch.Tensor], src: int) -> int:
    """Overwrite every rank's copies of `tensors` with rank `src`'s, one broadcast per dtype; returns
    the bytes this rank sent (0 unless it is `src`)."""
    by_dtype: dict[torch.dtype, list[torch.Tensor]] = defaultdict(list)
    for tensor in tensors:
        by_dtype[tensor.dtype].append(tensor)
    sent = 0
    with torch.no_grad():
        for group in by_dtype.values():
            flat = torch.cat([t.reshape(-1) for t in group])
            dist.broadcast(flat, src)
            if dist.get_rank() == src:
                sent += flat.numel() * flat.element_size()
                continue
            for tensor, value in zip(group, flat.split([t.numel() for t in group])):
                tensor.copy_(value.view_as(tensor))
    return sent


def stage_block(net: nn.Sequential, bounds: tuple[int, int]) -> nn.Sequential:
    """The children in `bounds` (the same modules, not copies) as a plain nn.Sequential."""
    return nn.Sequential(*list(net.children())[bounds[0] : bounds[1]])


def stage_tensors(net: nn.Sequential, bounds: tuple[int, int]) -> list[torch.Tensor]:
    """Parameters and buffers of the children in `bounds`: what a stage owns and trains."""
    block = stage_block(net, bounds)
    return [*block.parameters(), *block.buffers()]


def gather_stages(net: nn.Sequential, bounds: list[tuple[int, int]]) -> int:
    """Every rank's net gets each stage's weights from the rank that trains it (stage s = rank s)."""
    return sum(broadcast_tensors(stage_tensors(net, b), src=s) for s, b in enumerate(bounds))


# --- optimizer state: stage-local <-> the single-process layout ------------------------------------
def full_layout(optimizer: torch.optim.Optimizer, names: dict[int, str]) -> list[list[str]]:
    """Parameter names per group of an optimizer built over the whole module (before stage filtering)."""
    return [[names[id(p)] for p in group["params"]] for group in optimizer.param_groups]


def gather_optimizer_state(
    optimizer: torch.optim.Optimizer, names: dict[int, str], layout: list[list[str]]
) -> dict[str, Any]:
    """All stages' optimizer states as ONE state dict in the single-process layout (index = position
    in `layout`), assembled on every rank (CPU tensors)."""
    local = optimizer.state_dict()
    params = [names[id(p)] for group in optimizer.param_groups for p in group["params"]]
    mine = {
        params[i]: {k: v.cpu() if torch.is_tensor(v) else v for k, v in state.items()}
        for i, state in local["state"].items()
    }
    everyone: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(everyone, mine)
    merged = {name: state for part in everyone for name, state in part.items()}
    index = {name: i for i, name in enumerate(n for group in layout for n in group)}
    groups, start = [], 0
    for group, names_in_group in zip(local["param_groups"], layout):
        groups.append({**group, "params": list(range(start, start + len(names_in_group)))})
        start += len(names_in_group)
    return {"state": {index[name]: state for name, state in merged.items()}, "param_groups": groups}


def local_optimizer_state(
    full: dict[str, Any], optimizer: torch.optim.Optimizer, names: dict[int, str], layout: list[list[str]]
) -> dict[str, Any]:
    """The part of a single-process-layout optimizer state that this rank's stage optimizer holds."""
    flat = [n for group in layout for n in group]
    local_names = [names[id(p)] for group in optimizer.param_groups for p in group["params"]]
    position = {name: i for i, name in enumerate(local_names)}
    state = {position[flat[i]]: s for i, s in full["state"].items() if flat[i] in position}
    groups, start = [], 0
    for group, saved in zip(optimizer.param_groups, full["param_groups"]):
        groups.append({**saved, "params": list(range(start, start + len(group["params"])))})
        start += len(group["params"])
    return {"state": state, "param_groups": groups}
