"""`python -m recipes.evaluate ckpt_path=PATH [weights=RUN/export/model.dcz]`: rebuild data and module
from the checkpoint's saved config and print its test metrics, the same numbers recipes.train reported
at the end of training. With `weights`, the net's weights are those decoded from that .dcz file
(recipes.export export=dcz), which holds weights only: the checkpoint gives the config."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf
from torch import nn

from callbacks.formats import dcz
from recipes.assembly.restore import rebuild
from recipes.errors import RecipeError
from recipes.runtime.guard import guarded, run_main
from recipes.stages.results import print_summary, strict_json
from recipes.stages.scoring import score

__all__ = ["evaluate", "load_dcz", "main"]


def load_dcz(net: nn.Module, path: Path) -> None:
    """The weights of a .dcz file into `net`, or a one-line RecipeError."""
    if not path.is_file():
        raise RecipeError(f"weights={path} does not exist: pass the model.dcz that recipes.export export=dcz wrote")
    try:
        dcz.load_into(net, path)
    except dcz.DczError as err:
        raise RecipeError(f"weights={err}") from None


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    overrides = OmegaConf.to_container(cfg.overrides, resolve=True) if cfg.overrides else {}
    if str(cfg.ckpt_path).endswith(".dcz"):
        raise RecipeError(
            f"ckpt_path={cfg.ckpt_path} is a .dcz file, which holds weights only: pass the run's "
            f"checkpoint as ckpt_path and the file as weights={cfg.ckpt_path}"
        )
    saved_cfg, datamodule, module, choices = rebuild(cfg.ckpt_path, overrides, cfg.trusted_targets)
    if cfg.get("weights"):
        load_dcz(module.shipped_net, Path(cfg.weights))
    metrics = score(saved_cfg, module, datamodule)
    report = {
        "recipe": choices.get("recipe"),
        "task": choices.get("task"),
        "checkpoint": str(cfg.ckpt_path),
        **({"weights": str(cfg.weights)} if cfg.get("weights") else {}),
        "metrics": metrics,
    }
    print_summary(report, title="evaluate")
    print(strict_json(metrics))
    if cfg.out:
        Path(cfg.out).write_text(strict_json(report, indent=2) + "\n")
    return report


@hydra.main(version_base="1.3", config_path="pkg://conf", config_name="evaluate")
def _hydra_main(cfg: DictConfig) -> None:
    guarded(evaluate, cfg)


def main() -> None:
    run_main(_hydra_main)


if __name__ == "__main__":
    main()
