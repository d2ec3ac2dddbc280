"""Start-up validation of a compression plan (`compress=[...]`), before any training.

Steps run in list order, and only some orders make sense: each step declares its stage (structure,
then sparsity, then precision: see callbacks/step.py) and the steps it excludes, so this module knows
no step by name. Each step also checks its own schedule and sizes against the net as the earlier
steps will have left it, which a dry run of the structural steps on a copy of the net gives.
"""

from __future__ import annotations

import copy

from torch import nn

from callbacks.step import CompressionStep

__all__ = ["check_compression_plan", "check_order"]


def check_order(steps: dict[str, CompressionStep]) -> None:
    """Raise ValueError (one line, naming the fix) for two steps that exclude each other or a step
    placed after one that must follow it."""
    plan = f"compress=[{','.join(steps)}]"
    classes = [type(step) for step in steps.values()]
    for i, earlier in enumerate(classes):
        for later in classes[i + 1 :]:
            reason = earlier.excludes.get(later.step) or later.excludes.get(earlier.step)
            if reason:
                raise ValueError(f"{plan}: {earlier.step} and {later.step} {reason}; use one of them")
    for earlier, later in zip(classes, classes[1:]):
        if earlier.place() > later.place():
            fixed = ",".join(sorted(steps, key=lambda name: type(steps[name]).place()))
            raise ValueError(
                f"{plan}: {later.step} must come before {earlier.step} ({later.order_reason}); use compress=[{fixed}]"
            )


def check_compression_plan(steps: dict[str, CompressionStep], net: nn.Module, max_epochs: int) -> None:
    """Raise ValueError (one line, naming the fix) for a bad order, combination or setting."""
    plan = f"compress=[{','.join(steps)}]"
    for name, step in steps.items():
        if not isinstance(step, CompressionStep):
            raise ValueError(
                f"compress.{name}: {type(step).__module__}.{type(step).__qualname__} is not a "
                "compression step; its _target_ must subclass callbacks.step.CompressionStep"
            )
    check_order(steps)
    for (name, step), (next_name, next_step) in zip(steps.items(), list(steps.items())[1:]):
        if step.epochs()[1] > next_step.epochs()[0]:
            raise ValueError(
                f"{plan}: {name} changes the net until epoch {step.epochs()[1]} but {next_name} starts "
                f"at epoch {next_step.epochs()[0]}; steps run in list order, so move {next_name} later"
            )
    preview = copy.deepcopy(net)
    for step in steps.values():
        step.check(preview, max_epochs)
        step.restructure(preview)  # what later steps will see
