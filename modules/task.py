"""The task contract: what the core (build, checkpoint, train, evaluate, export, the compression
callbacks) may ask of a task module, so that none of it assumes one classifier with one `.net` and an
accuracy metric. Every task under modules/ derives from `Task`."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable
from pathlib import Path
from typing import Any, ClassVar, Self

import torch
from torch import nn
from typing_extensions import override

from modules.base import RecipeModule

__all__ = ["MODES", "Task"]

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
    #: trainer runs with inference_mode=False (recipes.stages.scoring).
    evaluates_with_gradients: ClassVar[bool] = False
    #: Declared capability: the task's training step is a plain forward + loss over (x, y) batches,
    #: `loss_fn(shipped_net(x), y)` with an nn.Sequential net, which the pipeline schedule can run stage by
    #: stage (strategy=pipeline refuses any other task at start-up). A subclass that overrides
    #: training_step declares it anew.
    pipelines: ClassVar[bool] = False
    #: Declared capability: the task steps its own optimizers (Lightning's manual optimization, e.g. a
    #: GAN's two); strategies built around one optimizer step per batch refuse it at start-up.
    manual_optimization: ClassVar[bool] = False

    def __init__(self, monitor: str, monitor_mode: str) -> None:
        super().__init__()
        if monitor_mode not in MODES:
            raise ValueError(
                f"task.monitor_mode={monitor_mode!r} must be 'min' or 'max' (the direction in "
                f"which task.monitor={monitor} improves)"
            )
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
        game). recipes/assembly/divergence.py warns at the end of a run whose loss stayed at or above it, or did
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

    @override
    def forward(self, *inputs: Any) -> Any:
        """The shipped net's forward: what `module(x)` / `predict_step` return for a loaded checkpoint,
        and what the model summary measures (FLOPs, sizes) with `example_input_array`."""
        return self.shipped_net(*inputs)

    @property
    @override
    def example_input_array(self) -> Any:
        """`example_input(1)`: Lightning's model summary runs it to count FLOPs and show layer sizes
        (without one it prints `Total FLOPs: 0`)."""
        return self.example_input(1)

    @classmethod
    @override
    def load_from_checkpoint(
        cls,
        checkpoint_path: str | Path,
        map_location: Any = None,
        hparams_file: Any = None,
        strict: bool | None = None,
        weights_only: bool | None = None,
        trusted_targets: Iterable[str] = (),
        **task_overrides: Any,
    ) -> Self:
        """Lightning's loader for a recipes checkpoint: `ClassifierModule.load_from_checkpoint(path)`.

        Lightning's own would call `cls(**checkpoint["hyper_parameters"])`, but a task's constructor
        takes built nets, not config, and those hyper-parameters would be code to run from a file (its
        `_instantiator`). Here the task is rebuilt the way recipes.evaluate rebuilds it: from the config
        saved in the checkpoint (only this project's shipped `_target_`s, or `trusted_targets`; structure
        edits replayed), sized by the data shape it recorded, its reference nets (teacher, source, feature
        classifier) loaded from the paths its config names, then its weights loaded strictly from a
        `torch.load(weights_only=True)`. `task_overrides` patch the saved task config, e.g.
        `DistillModule.load_from_checkpoint(path, teacher_ckpt=None)` when the teacher file is not at hand.
        `map_location`: the device to put the module on (CPU by default).

        The rebuild path lives in recipes/ (the trust rules); it is imported here, at call time, the one
        place a task module reaches up into it."""
        refused = {
            "hparams_file": hparams_file is not None,
            "strict=False": strict is False,
            "weights_only=False": weights_only is False,
            "map_location": map_location is not None and not isinstance(map_location, (str, torch.device)),
        }
        if any(refused.values()):
            given = ", ".join(name for name, bad in refused.items() if bad)
            raise ValueError(
                f"{cls.__name__}.load_from_checkpoint: {given} is not supported: a recipes checkpoint "
                "holds its own config, loads strictly with weights_only=True, and map_location names "
                "one device (e.g. 'cpu', 'cuda:0')"
            )
        from recipes.assembly.restore import load_task

        module = load_task(str(checkpoint_path), {f"task.{k}": v for k, v in task_overrides.items()}, trusted_targets)
        if not isinstance(module, cls):
            raise ValueError(
                f"{checkpoint_path} holds a {type(module).__module__}.{type(module).__name__}, not a "
                f"{cls.__name__}: load it with {type(module).__name__}.load_from_checkpoint (or "
                "modules.task.Task.load_from_checkpoint, which takes any task)"
            )
        return module.to(map_location) if map_location is not None else module

    @classmethod
    def monitorable_metric_names(cls) -> tuple[str, ...] | None:
        """The metrics the task logs at every validation (or training epoch end): the names
        `task.monitor` (the best checkpoint's metric, and a search's objective) may take. The start-up
        checks refuse any other name before anything trains; None (the default) declares nothing, and
        a misnamed monitor then fails at the first validation, in Lightning's words."""
        return None

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
