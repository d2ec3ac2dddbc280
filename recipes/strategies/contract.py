"""The strategy contract: what the core (start-up checks, the fit stage, results.json, the compression
surgery) may ask of a training strategy, declared once with its defaults instead of probed for.

A mixin base class, not a Protocol: the start-up checks read the strategy's class from the config before
anything is built (`strategy._target_`), and a runtime_checkable Protocol with data members does not
support `issubclass`; a base class also gives every member its documented default, so a strategy declares
only what differs. Every strategy in recipes/strategies derives from it. Lightning's own strategies
(strategy=single: `auto`, a SingleDeviceStrategy) do not: `recipe_strategy` reads them as the defaults.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any, ClassVar, overload

__all__ = ["DEFAULTS", "RecipeStrategy", "recipe_strategy"]


class RecipeStrategy:
    """Mixin of every recipes strategy (put it after the Lightning strategy it extends, so Lightning's own
    members come first). Class-level declarations (read from the class at start-up):

    - `restructurable`: it can follow a compression step that changes layer shapes mid-fit
      (callbacks.step.CompressionStep.changes_shapes); False refuses such a plan at start-up.
    - `splits_net`: each rank runs a different block of the net (a pipeline); a compression step that
      couples layers (CompressionStep.couples_layers) is then refused at start-up.
    - `check_task(task_class)`: raise ValueError (one line, naming the fix) for a task class it cannot
      train; the start-up checks call it before any prerequisite model trains.

    Instance members (read once the strategy is built):

    - `comm_bytes`: bytes this rank sent in collectives during fit (results.json's
      `parallel.comm_bytes_per_step`); None: it keeps no count, and the key is left out.
    - `parallel_extra`: more keys for results.json's `parallel` section (e.g. strategy=async's per-worker
      step counts), read in the main process after fit.
    - `on_restructure()`: called after a compression step changed layer shapes and the DDP wrapper was
      rebuilt (callbacks.surgery.structure.Restructurable), for state that holds the old tensors.
    - `collective_timeout` / `startup_timeout`: how long a rank waits for the others in a collective / at
      start-up (recipes.strategies.timeout); None: one process, no other rank to lose.
    - `ranks_met`: the ranks have met (the process group is up), so a lost peer timed out in a collective.
    """

    restructurable: ClassVar[bool] = True
    splits_net: ClassVar[bool] = False
    comm_bytes: int | None = None
    collective_timeout: timedelta | None = None
    startup_timeout: timedelta | None = None
    ranks_met: bool = False

    @staticmethod
    def check_task(task: type) -> None:
        """Every task is served (a strategy that refuses some overrides this)."""

    @property
    def parallel_extra(self) -> dict[str, Any]:
        return {}

    def on_restructure(self) -> None:
        """Nothing holds the old layers (a strategy whose state does overrides this)."""


DEFAULTS = RecipeStrategy()  # what a strategy that does not declare the contract is read as


@overload
def recipe_strategy(strategy: type) -> type[RecipeStrategy]: ...
@overload
def recipe_strategy(strategy: object) -> RecipeStrategy: ...
def recipe_strategy(strategy: Any) -> RecipeStrategy | type[RecipeStrategy]:
    """`strategy` (a class, as the config names it, or a built instance) as the contract reads it: itself
    when it declares the contract, else the defaults (RecipeStrategy itself for a class, DEFAULTS for an
    instance), e.g. for Lightning's SingleDeviceStrategy under strategy=single."""
    if isinstance(strategy, type):
        return strategy if issubclass(strategy, RecipeStrategy) else RecipeStrategy
    return strategy if isinstance(strategy, RecipeStrategy) else DEFAULTS
