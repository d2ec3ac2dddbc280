"""Registers recipes.sweep.sweeper.OptunaSweeper with Hydra (`hydra/sweeper=optuna`, conf/hydra/sweeper/optuna.yaml).

Hydra instantiates a sweeper only from a class under the `hydra_plugins` namespace package, and imports
every module here at start-up (every entry point, every run): this one imports nothing heavy (Optuna is
imported when a sweep starts)."""

from recipes.sweep import sweeper as _sweeper

__all__ = ["OptunaSweeper"]


class OptunaSweeper(_sweeper.OptunaSweeper):
    """recipes.sweep.sweeper.OptunaSweeper under the name Hydra accepts (hydra_plugins.*)."""
