"""A Hydra sweep's search space as Optuna distributions: `hydra.sweeper.params` (and sweep overrides on
the command line) in Hydra's own override grammar, the grammar hydra-optuna-sweeper reads:

    task.optimizer.lr: tag(log, interval(1e-4, 1e-1))   # FloatDistribution(log=True)
    task.alpha: interval(0.1, 0.9)                       # FloatDistribution
    compress.prune.amount: range(0.5, 0.95, 0.15)        # a stepped FloatDistribution / IntDistribution
    model.hidden: choice([100], [300, 100])              # CategoricalDistribution
    seed: 3                                              # a fixed override, the same in every trial

Values of a later entry win over an earlier one (the command line over the config), and a fixed value
takes its key out of the search space. Hydra parses; Optuna samples; this module only maps one onto
the other (and picks the value a start-up probe composes with).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import IntervalSweep, Override, Transformer
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution

from recipes.errors import RecipeError

__all__ = ["SearchSpace", "distribution", "parse"]


@dataclass
class SearchSpace:
    """Distributions to sample, by override key, and fixed overrides (`key=value` strings)."""

    distributions: dict[str, BaseDistribution] = field(default_factory=dict)
    fixed: dict[str, str] = field(default_factory=dict)

    def overrides(self, params: dict[str, Any]) -> list[str]:
        """The override strings of one trial: the fixed ones, then the sampled `params`."""
        return [f"{key}={value}" for key, value in self.fixed.items()] + [f"{k}={v}" for k, v in params.items()]

    def probe(self) -> list[str]:
        """Overrides that compose the config at one corner of the space (each distribution's low end or
        first choice), so start-up checks run once before any trial."""
        params = {}
        for key, dist in self.distributions.items():
            params[key] = dist.choices[0] if isinstance(dist, CategoricalDistribution) else dist.low
        return self.overrides(params)


def _interval(override: Override) -> BaseDistribution:
    value = override.value()
    assert isinstance(value, IntervalSweep)
    log = "log" in value.tags
    if "int" in value.tags or (isinstance(value.start, int) and isinstance(value.end, int)):
        return IntDistribution(int(value.start), int(value.end), log=log)
    return FloatDistribution(float(value.start), float(value.end), log=log)


def _range(override: Override, values: list[Any]) -> BaseDistribution:
    step = override.value().step
    if all(isinstance(v, int) for v in values) and isinstance(step, int):
        return IntDistribution(values[0], values[-1], step=step)
    return FloatDistribution(float(values[0]), float(values[-1]), step=float(step))


def distribution(override: Override) -> BaseDistribution | str:
    """One override as an Optuna distribution, or its value as a string when it is not a sweep."""
    line = override.input_line
    if not override.is_sweep_override():
        return override.get_value_element_as_str()
    if override.is_interval_sweep():
        return _interval(override)
    # choice / range; lists and dicts are kept as their override text (Optuna's choices are scalars)
    values = list(override.sweep_iterator(transformer=Transformer.encode))
    if not values:
        raise RecipeError(f"the search space entry '{line}' has no values: give at least one")
    if override.is_range_sweep() and not override.value().shuffle and len(values) > 1:
        return _range(override, values)
    return CategoricalDistribution(values)


def parse(entries: list[str]) -> SearchSpace:
    """Parse `key=value` entries (sweeper params, then the command line) into a SearchSpace."""
    try:
        overrides = OverridesParser.create().parse_overrides(entries)
    except Exception as err:  # noqa: BLE001 - Hydra's parser raises its own error types
        raise RecipeError(
            f"cannot parse the search space ({str(err).splitlines()[0]}): write each entry as "
            f"key: interval(a, b), tag(log, interval(a, b)), range(a, b, step) or choice(x, y)"
        ) from None
    space = SearchSpace()
    for override in overrides:
        key = override.get_key_element()
        value = distribution(override)
        space.distributions.pop(key, None)
        space.fixed.pop(key, None)
        if isinstance(value, BaseDistribution):
            space.distributions[key] = value
        else:
            space.fixed[key] = value
    return space
