"""The start-up refusal shared by the strategies built around one optimizer step per batch."""

from __future__ import annotations

from modules.task import Task

__all__ = ["refuse_self_stepping"]


def refuse_self_stepping(task: type, strategy: str, why: str) -> None:
    """Start-up refusal (ValueError, one line) of a task that steps its own optimizers (Lightning's
    manual optimization, e.g. task=gan: Task.manual_optimization), for a strategy built around one
    optimizer step per batch. A class that is not a Task is left to build_task, which refuses it."""
    if isinstance(task, type) and issubclass(task, Task) and task.manual_optimization:
        raise ValueError(
            f"strategy={strategy} cannot train {task.__name__}, which steps its own optimizers "
            f"(task=gan): {why}; use trainer=ddp_sim (strategy=ddp) or strategy=single"
        )
