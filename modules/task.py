"""The task contract: what the core (build, checkpoint, train, evaluate, prerequisites, compression,
export) may ask of any task module, so that nothing there assumes one classifier with one `.net`."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

from torch import nn

from modules.base import RecipeModule


class Task(RecipeModule, ABC):
    """Base of every task module (classifier, distillation, adaptation, GAN).

    `monitor` / `monitor_mode`: the metric that picks the best checkpoint and whether lower or
    higher is better (constructor arguments, set in conf/task/*.yaml).
    """

    monitor: str
    monitor_mode: str

    @property
    @abstractmethod
    def shipped_net(self) -> nn.Module:
        """The net that ships: compression acts on it, export writes it, recipes.evaluate rebuilds it."""

    @abstractmethod
    def example_input(self, batch_size: int = 1) -> Any:
        """A batch the shipped net accepts (for export and its parity check)."""

    @classmethod
    def test_metric_names(cls) -> tuple[str, ...]:
        """The metrics the task's test stage logs (the summary and results.json report them)."""
        return ()
