"""The robustness stage, shared by recipes.attack and recipes.train (`attack=...`): one configured
attack (conf/attack/) against a classifier on the test split, in a test trainer with gradients on;
then robustness.json, robustness.png (accuracy vs eps, one line per attack) and a printed table."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig
from rich.console import Console
from rich.table import Table

from modules.attacks import Attack
from modules.pixel_model import PixelModel
from modules.robustness import RobustnessProbe
from modules.task import Task
from recipes.assembly.instantiation import instantiate_part
from recipes.assembly.training import build_test_trainer
from recipes.errors import RecipeError
from recipes.stages.results import strict_json

__all__ = [
    "JSON_NAME",
    "PLOT_NAME",
    "attacker_pool",
    "build_attack",
    "check_classifier",
    "measure",
    "plot",
    "print_table",
    "robustness_results",
    "write_report",
]

JSON_NAME, PLOT_NAME = "robustness.json", "robustness.png"


def build_attack(node: DictConfig) -> Attack:
    """The attack of an `attack` config node (type-checked; a bad value is a one-line RecipeError)."""
    attack = instantiate_part(node, "attack")
    if not isinstance(attack, Attack):
        raise RecipeError(f"attack._target_={node._target_} is not a modules.attacks.Attack")
    return attack


def check_classifier(module: Task, what: str) -> None:
    """Only a task that declares an image classifier (Task.classifies_images) can be attacked."""
    if not type(module).classifies_images:
        raise RecipeError(
            f"{what} is a {type(module).__name__}, which does not classify images: attacks need a "
            f"classifier checkpoint (e.g. of recipe=baseline or recipe=adv_train)"
        )


def attacker_pool(model: PixelModel, datamodule: Any) -> torch.Tensor:
    """The validation split's images in [0, 1]: the black-box attacker's own, unlabelled data."""
    datamodule.setup("fit")
    with torch.no_grad():
        return torch.cat([model.to_pixels(batch[0]) for batch in datamodule.val_dataloader()])


def measure(cfg: DictConfig, attack: Attack, module: Task, datamodule: Any, what: str) -> dict[str, Any]:
    """robustness.json's content for `module`'s shipped net under `attack` (`cfg`: the run's config,
    for the test trainer's device and precision)."""
    check_classifier(module, what)
    model = PixelModel.of(module.shipped_net, datamodule)
    pool = attacker_pool(model, datamodule) if attack.black_box else None
    probe = RobustnessProbe(model, attack, datamodule.num_classes, pool)
    build_test_trainer(cfg, inference_mode=False).test(probe, datamodule=datamodule, verbose=False)
    return probe.report()


def print_table(report: dict[str, Any]) -> None:
    table = Table(title=f"robustness: clean accuracy {report['clean_acc']:.4f} on {report['samples']} test samples")
    for column in ("attack", "eps", "robust acc", "success rate", "seconds"):
        table.add_column(column, justify="left" if column == "attack" else "right")
    for row in report["results"]:
        success = row["success_rate"]
        table.add_row(
            row["attack"],
            f"{row['eps']:g}",
            f"{row['robust_acc']:.4f}",
            "-" if success is None else f"{success:.4f}",
            f"{row['seconds']:.2f}",
        )
    Console().print(table)


def plot(reports: dict[str, dict[str, Any]], path: Path, title: str = "robustness") -> None:
    """Accuracy vs eps, one line per attack of each report (labelled `<name> <attack>` when there are
    several reports), each starting from its clean accuracy at eps 0."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, report in reports.items():
        by_attack: dict[str, list[tuple[float, float]]] = {}
        for row in report["results"]:
            by_attack.setdefault(row["attack"], [(0.0, report["clean_acc"])]).append((row["eps"], row["robust_acc"]))
        for attack, points in by_attack.items():
            points.sort()
            label = attack if len(reports) == 1 else name if len(by_attack) == 1 else f"{name} {attack}"
            ax.plot([p[0] for p in points], [100 * p[1] for p in points], marker="o", label=label)
    ax.set_xlabel("eps (L-inf or L2, pixel units in [0, 1])")
    ax.set_ylabel("accuracy under attack (%)")
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, path)


def write_report(report: dict[str, Any], out_dir: Path) -> None:
    """robustness.png, then robustness.json, each through a temporary file and a rename."""
    out_dir.mkdir(parents=True, exist_ok=True)
    plot({"": report}, out_dir / PLOT_NAME)
    tmp = out_dir / f".{JSON_NAME}.tmp"
    tmp.write_text(strict_json(report, indent=2) + "\n")
    os.replace(tmp, out_dir / JSON_NAME)


def robustness_results(cfg: DictConfig, module: Task, datamodule: Any) -> dict[str, Any]:
    """recipes.train's robustness stage: with `attack=...` set, results.json's `robustness` section
    (and robustness.png in the run dir); without it, nothing."""
    if not cfg.get("attack"):
        return {}
    report = measure(cfg, build_attack(cfg.attack), module, datamodule, f"task={cfg.task._target_}")
    print_table(report)
    plot({"": report}, Path(cfg.paths.run_dir) / PLOT_NAME)
    return {"robustness": report}
