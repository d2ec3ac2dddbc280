"""The task contract: what the core (build, checkpoint, train, evaluate, export, the compression
callbacks) may ask of a task module, so that none of it assumes one classifier with one `.net` and an
accuracy metric. Every task under modules/ derives from `Task`."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar

from torch import nn

from modules.base import RecipeModule

MODES = ("min", "max")


class Task(RecipeModule, ABC):
    """A LightningModule that names its best-checkpoint metric, the net it ships, an example input
    for export and its test metrics.

    `monitor` / `monitor_mode` are constructor arguments (set in conf/task/*.yaml), so that
    `task.monitor=val/loss task.monitor_mode=min` picks another best checkpoint from the command line;
    conf/callbacks/default.yaml's best-checkpoint callback reads them from there.
    """

    #: Declared capability: `shipped_net` maps a batch of images, as the data module gives them, to
    #: class logits, so recipes.attack (and `attack=...` on recipes.train) can measure its robustness.
    #: A GAN's generator does not; such a checkpoint is refused in one line.
    classifies_images: ClassVar[bool] = False
    #: Declared need: the validation and test steps take input gradients (e.g. an attack), so the test
    #: trainer runs with inference_mode=False (recipes.testing).
    evaluates_with_gradients: ClassVar[bool] = False

    def __init__(self, monitor: str, monitor_mode: str) -> None:
        super().__init__()
        if monitor_mode not in MODES:
            raise ValueError(f"task.monitor_mode={monitor_mode!r} must be 'min' or 'max' (the direction in "
                             f"which task.monitor={monitor} improves)")
        if not isinstance(monitor, str) or "/" not in monitor:
            raise ValueError(f"task.monitor={monitor!r} must name a logged metric, e.g. val/acc or val/loss")
        self.monitor, self.monitor_mode = monitor, monitor_mode

    @classmethod
    def check_arguments(cls, arguments: dict[str, Any]) -> None:
        """Raise ValueError (a `task.<key>=<value> ...` message) for a bad plain-valued argument. The
        start-up checks call it with the task's config before any prerequisite model trains, so that a
        bad value is refused before, not after, a teacher or feature classifier is trained; the
        constructor calls it too. Arguments not given are absent (their defaults are good)."""

    def chance_loss(self) -> float | None:
        """The training loss of a model that has learned nothing (a classifier's uniform guess: ln C),
        or None where the loss has no such level or need not fall as the task learns (a GAN's minimax
        game). recipes/divergence.py warns at the end of a run whose loss stayed at or above it, or did
        not fall; with None it does not judge."""
        return None

    @property
    @abstractmethod
    def shipped_net(self) -> nn.Module:
        """The net that ships: compression acts on it, export writes it, recipes.evaluate rebuilds it.
        It is a submodule of the task, so its weights are in the task's checkpoint."""

    @abstractmethod
    def example_input(self, batch_size: int = 1) -> Any:
        """A batch `shipped_net` accepts (export traces it; its first dim is the dynamic batch)."""

    @classmethod
    @abstractmethod
    def test_metric_names(cls) -> tuple[str, ...]:
        """The metrics `trainer.test` logs, headline first (results.json's compression section
        reports the headline one before and after each step)."""

    def run_record(self) -> dict[str, Any]:
        """Sections this task adds to results.json about its own run (public keys, e.g. an adversarial
        task's `adversarial` section with its overfitting guard); empty by default."""
        return {}

    def parity_inputs(self, datamodule: Any) -> Any:
        """The inputs on which an exported `shipped_net` must match the trained one; by default
        `example_input(256)` (a task whose example input is random, e.g. latent vectors, needs no more)."""
        return self.example_input(256)

    def shipped_prefix(self) -> str:
        """The state-dict prefix of `shipped_net` inside the task (e.g. `net`), for reports and loads."""
        for name, module in self.named_modules():
            if module is self.shipped_net:
                return name
        raise RuntimeError(f"{type(self).__name__}.shipped_net is not a submodule of the task")
