"""Start-up validation of a compression plan (`compress=[...]`), before any training.

Steps run in list order, and only some orders make sense: structure first (hidden-node pruning
shrinks layers, then SVD factors what is left), sparsity last (magnitude pruning or DSD masks the
final layers: factoring a pruned matrix would make it dense again). Each step also checks its own
schedule and sizes against the net as the earlier steps will have left it, which a dry run of the
structural steps on a copy of the net gives.
"""

from __future__ import annotations

import copy
from typing import Any

from torch import nn

# Position of each kind of step in a valid plan; equal positions exclude each other.
ORDER = {"hidden_prune": 0, "svd": 1, "prune": 2, "dsd": 2}
WHY = {
    ("svd", "hidden_prune"): "shrink layers before factoring them",
    ("prune", "hidden_prune"): "a masked layer cannot be shrunk by its weights' norms; shrink first",
    ("prune", "svd"): "factoring a pruned matrix makes it dense again",
    ("dsd", "hidden_prune"): "shrink first, then train dense-sparse-dense",
    ("dsd", "svd"): "factor first, then train dense-sparse-dense",
}


def check_plan(steps: dict[str, Any], net: nn.Module, max_epochs: int) -> None:
    """Raise ValueError (one line, naming the fix) for a bad order, combination or setting."""
    plan = f"compress=[{','.join(steps)}]"
    kinds = [step.step for step in steps.values()]
    for earlier, later in zip(kinds, kinds[1:]):
        if ORDER[earlier] == ORDER[later]:
            raise ValueError(f"{plan}: {earlier} and {later} both mask the weights; use one of them")
        if ORDER[earlier] > ORDER[later]:
            fixed = ",".join(sorted(steps, key=lambda name: ORDER[steps[name].step]))
            raise ValueError(f"{plan}: {later} must come before {earlier} ({WHY[(earlier, later)]}); "
                             f"use compress=[{fixed}]")
    for (name, step), (next_name, next_step) in zip(steps.items(), list(steps.items())[1:]):
        if step.epochs()[1] > next_step.epochs()[0]:
            raise ValueError(f"{plan}: {name} changes the net until epoch {step.epochs()[1]} but {next_name} starts "
                             f"at epoch {next_step.epochs()[0]}; steps run in list order, so move {next_name} later")
    preview = copy.deepcopy(net)
    for step in steps.values():
        step.check(preview, max_epochs)
        if hasattr(step, "restructure"):  # what later steps will see
            step.restructure(preview)
