"""`python -m recipes.evaluate ckpt_path=PATH`: rebuild data and module from the checkpoint's saved
config and print its test metrics, the same numbers recipes.train reported at the end of training."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from recipes import cli
from recipes.build import rebuild
from recipes.results import print_summary, strict_json
from recipes.testing import test_metrics


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    overrides = OmegaConf.to_container(cfg.overrides, resolve=True) if cfg.overrides else {}
    saved_cfg, datamodule, module, choices = rebuild(cfg.ckpt_path, overrides, cfg.trusted_targets)
    metrics = test_metrics(saved_cfg, module, datamodule)
    report = {"recipe": choices.get("recipe"), "task": choices.get("task"), "checkpoint": str(cfg.ckpt_path),
              "metrics": metrics}
    print_summary(report, title="evaluate")
    print(strict_json(metrics))
    if cfg.out:
        Path(cfg.out).write_text(strict_json(report, indent=2) + "\n")
    return report


@hydra.main(version_base="1.3", config_path="pkg://conf", config_name="evaluate")
def _hydra_main(cfg: DictConfig) -> None:
    cli.guarded(evaluate, cfg)


def main() -> None:
    cli.run_main(_hydra_main)


if __name__ == "__main__":
    main()
