"""The compression-step contract: what the plan (callbacks/plan.py), the start-up checks and the report
may ask of a compression callback. Each step declares its own place in a plan and what it cannot share
a plan with, so a new step is one file (a `CompressionStep` subclass) plus one YAML under
conf/compress/, and no central table names the steps.

A plan runs in stage order: STRUCTURE steps change layer shapes (hidden-node pruning, SVD), SPARSITY
steps zero weights of the final layers (magnitude pruning, DSD), PRECISION steps change how the
surviving weights are represented (quantization, binary / ternary weights, weight sharing). Each
later stage keeps what the earlier ones did; the other way round undoes it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from enum import IntEnum
from typing import Any, ClassVar

from lightning.pytorch.callbacks import Callback
from torch import nn

__all__ = ["CompressionStep", "Stage"]


class Stage(IntEnum):
    """Where a step runs in a plan, earliest first."""

    STRUCTURE = 0
    SPARSITY = 1
    PRECISION = 2


class CompressionStep(Callback, ABC):
    """A Lightning callback that compresses the task's `shipped_net` at scheduled epochs.

    Class declarations (read by the plan before anything is built):
    - `step`: the name in `compress=[...]` and in the net's recorded structure edits;
    - `stage` and `order_in_stage`: its place in a plan (lower first);
    - `order_reason`: why it must come before the steps placed after it (shown when a plan has it late);
    - `excludes`: names of steps it cannot share a plan with, each with the reason;
    - `changes_shapes`: whether it edits layer shapes during training (a strategy that cannot follow
      a shape change refuses it at start-up);
    - `couples_layers`: why it ties layers to each other during training (empty: it does not); a
      strategy that runs the net's blocks on different ranks (`splits_net`) refuses it at start-up.
    """

    step: ClassVar[str]
    stage: ClassVar[Stage]
    order_in_stage: ClassVar[int] = 0
    order_reason: ClassVar[str] = ""
    excludes: ClassVar[dict[str, str]] = {}
    changes_shapes: ClassVar[bool] = False
    couples_layers: ClassVar[str] = ""
    # one line on how `encoded_bytes` counts what this step ships, for the report (None: the default)
    encoding: ClassVar[str | None] = None

    # the net as this step first found it (a detached copy), for the report's before/after metric
    before: nn.Module | None = None

    @classmethod
    def place(cls) -> tuple[int, int]:
        """The sort key of this step in a plan."""
        return int(cls.stage), cls.order_in_stage

    @abstractmethod
    def epochs(self) -> tuple[int, int]:
        """First and last epoch at which this step changes the net."""

    @abstractmethod
    def check(self, net: nn.Module, max_epochs: int) -> None:
        """Start-up check against `net` as the earlier steps will have left it and the epoch budget:
        raise ValueError with a one-line `compress.<step>.<key>=<value> ...` message naming the fix."""

    def restructure(self, net: nn.Module) -> None:
        """Apply this step's shape changes to `net` (a dry run on a copy at start-up, so the next steps
        are checked against the shapes they will see). Steps with `changes_shapes` override it."""

    def encoded_bytes(self, net: nn.Module) -> dict[str, int]:
        """Bytes that the tensors this step encodes take as they ship, by state-dict key of the final
        `net` (e.g. int8 weights plus their scales); tensors not named are counted by the report's
        default encoding, and a later step's count of a tensor replaces an earlier one's."""
        return {}

    def results(self, net: nn.Module, dense_bytes: int) -> dict[str, Any]:
        """Keys this step adds to results.json's compression section about the final `net`
        (`dense_bytes`: the uncompressed net's), e.g. the size after each stage of its encoding."""
        return {}
