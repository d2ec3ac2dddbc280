"""The export stage, shared by recipes.train and recipes.export: the task's shipped net, traced with
its example input and checked on its parity inputs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from callbacks.formats.traced import ExportError, export_and_verify
from modules.task import Task
from recipes.errors import RecipeError

__all__ = ["export_shipped", "wants_export"]


def export_shipped(export_cfg: DictConfig, module: Task, datamodule: Any, out_dir: Path) -> dict[str, Any]:
    """Export `module.shipped_net` as `export_cfg` says and verify it; a failure is a RecipeError."""
    try:
        return export_and_verify(
            module.shipped_net,
            module.example_input(2),
            module.parity_inputs(datamodule),
            out_dir,
            **OmegaConf.to_container(export_cfg),
        )
    except ExportError as err:
        raise RecipeError(str(err)) from None


def wants_export(cfg: DictConfig) -> bool:
    """Whether the run's `export` group asks for any format."""
    return bool(cfg.get("export") and cfg.export.formats)
