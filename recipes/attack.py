"""`python -m recipes.attack ckpt_path=PATH attack=fgsm|pgd|pgd_l2|noise|transfer|autoattack
attack.eps=[0.05,0.1,0.2]`: the robustness of a classifier checkpoint on its test split (or the first
`attack.max_samples` images), rebuilt from the config saved in it as recipes.evaluate does. Prints a
table and writes robustness.json and robustness.png to <the checkpoint's run dir>/robustness/, or to
`out_dir=DIR`. Console script `recipes-attack`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import hydra
from hydra.utils import get_object
from omegaconf import DictConfig, OmegaConf

from modules.task import Task
from recipes.assembly.restore import rebuild
from recipes.checkpointing.format import load_checkpoint
from recipes.checkpointing.trust import saved_config
from recipes.errors import RecipeError
from recipes.runtime.guard import guarded, run_main
from recipes.stages.robustness_report import build_attack, measure, print_table, write_report

__all__ = ["attack", "check_classifier_checkpoint", "main", "report_dir"]


def check_classifier_checkpoint(path: str, trusted: list[str]) -> None:
    """Refuse a checkpoint whose task does not classify images (Task.classifies_images) before its
    model, and the reference models it needs, are built."""
    saved = saved_config(load_checkpoint(path), "ckpt_path", path, trusted)
    task = get_object(saved.task._target_)  # a shipped or trusted target: saved_config checked it
    if not (isinstance(task, type) and issubclass(task, Task) and task.classifies_images):
        raise RecipeError(
            f"ckpt_path={path} holds a {task.__name__} model, which does not classify images: "
            f"recipes.attack needs a classifier checkpoint (e.g. of recipe=baseline or recipe=adv_train)"
        )


def report_dir(cfg: DictConfig) -> Path:
    """`out_dir`, or robustness/ in the checkpoint's run dir (the folder holding its checkpoints/ folder;
    a checkpoint elsewhere: its own folder), next to the run's other results, not in the working directory."""
    if cfg.out_dir:
        return Path(cfg.out_dir)
    ckpt = Path(cfg.ckpt_path).resolve()
    return (ckpt.parent.parent if ckpt.parent.name == "checkpoints" else ckpt.parent) / "robustness"


def attack(cfg: DictConfig) -> dict[str, Any]:
    chosen = build_attack(cfg.attack)  # bad attack values fail before the checkpoint is read
    trusted = list(cfg.trusted_targets)
    check_classifier_checkpoint(str(cfg.ckpt_path), trusted)
    overrides = OmegaConf.to_container(cfg.overrides, resolve=True) if cfg.overrides else {}
    saved_cfg, datamodule, module, choices = rebuild(cfg.ckpt_path, overrides, trusted)
    report = {
        "checkpoint": str(cfg.ckpt_path),
        "recipe": choices.get("recipe"),
        "task": choices.get("task"),
        **measure(saved_cfg, chosen, module, datamodule, f"ckpt_path={cfg.ckpt_path}"),
    }
    print_table(report)
    out_dir = report_dir(cfg)
    write_report(report, out_dir)
    print(f"wrote {out_dir / 'robustness.json'} and robustness.png")
    return report


@hydra.main(version_base="1.3", config_path="pkg://conf", config_name="robustness")
def _hydra_main(cfg: DictConfig) -> None:
    guarded(attack, cfg)


def main() -> None:
    run_main(_hydra_main)


if __name__ == "__main__":
    main()
