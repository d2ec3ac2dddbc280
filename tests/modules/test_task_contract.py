"""The task contract (modules/task.py): every task under modules/ implements it; `task.monitor` /
`task.monitor_mode` pick the best checkpoint; and a task the core has never heard of (a regressor
whose shipped net is not `.net`, with no accuracy) runs through the real pipeline, compression and
export included, to results.json, and recipes.evaluate's rebuild reproduces its test metrics."""

from __future__ import annotations

import csv
import importlib
import inspect
import json
import pkgutil
import re
from math import prod
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf, open_dict
from torch import nn
from torchmetrics import MeanMetric
from typing_extensions import override

import modules
from modules.classifier import ClassifierModule
from modules.task import Task
from recipes.assembly.restore import rebuild
from recipes.assembly.tasks import build_datamodule, build_module
from recipes.runtime.overrides import group_options
from recipes.stages.scoring import score
from recipes.train import run
from tests.helpers.build import GENOTYPE, compose_train
from tests.helpers.runs import train, train_ok

FAST = [
    "trainer.max_epochs=3",
    "trainer.limit_train_batches=5",
    "logger=csv",
    "callbacks.model_summary=null",
    "callbacks.lr_monitor=null",
]


def task_classes() -> set[type]:
    """Every concrete Task subclass defined under modules/."""
    found = set()
    for info in pkgutil.walk_packages(modules.__path__, "modules."):
        for _, cls in inspect.getmembers(importlib.import_module(info.name), inspect.isclass):
            if issubclass(cls, Task) and cls.__module__.startswith("modules.") and not inspect.isabstract(cls):
                found.add(cls)
    return found


def test_every_task_under_modules_implements_the_contract(tmp_path: Path, feature_ckpt: str) -> None:
    """Each recipe's task, built as the recipe builds it (reference models unset): the shipped net is
    a submodule, the example input runs through it, the monitor and test metrics are declared."""
    seen = set()
    text = tmp_path / "text.txt"
    text.write_text("the quick brown fox jumps over the lazy dog\n" * 200, encoding="utf-8")
    needs = {  # what a recipe cannot be built without (other reference models: trained first)
        "gan": [f"task.feature_ckpt={feature_ckpt}"],
        "lm_finetune": [f"data.path={text}"],
        "darts": [f"model.genotype={GENOTYPE}"],  # what the search would deliver
        "darts_retrain": [f"model.genotype={GENOTYPE}"],
    }
    for recipe in group_options("recipe"):
        references = needs.get(recipe, [])
        cfg = compose_train(tmp_path / recipe, f"recipe={recipe}", *references)
        module = build_module(cfg, build_datamodule(cfg))
        seen.add(type(module))
        assert isinstance(module, Task)
        net = module.shipped_net
        assert isinstance(net, nn.Module) and any(m is net for m in module.modules()), recipe
        assert module.shipped_prefix() and module.monitor_mode in ("min", "max"), recipe
        assert isinstance(module.monitor, str) and module.monitor == cfg.task.monitor, recipe
        names = type(module).test_metric_names()
        assert names and all(isinstance(n, str) and n.startswith("test/") for n in names), recipe
        example = module.example_input(3)
        net.eval()
        with torch.no_grad():
            out = net(*example) if isinstance(example, tuple) else net(example)
        assert out.shape[0] == 3, recipe
    assert task_classes() <= seen, f"tasks no recipe builds (so untested here): {task_classes() - seen}"


def test_only_a_task_with_the_classifiers_training_step_declares_pipelines() -> None:
    """Task.pipelines (strategy=pipeline runs the training step stage by stage) holds only for a task whose
    training_step is ClassifierModule's plain loss_fn(net(x), y): a subclass that overrides it (an
    adversarial or distillation step) must declare False anew, or the pipeline would run the wrong step."""
    tasks = task_classes()
    assert ClassifierModule.pipelines and ClassifierModule in tasks and not Task.pipelines
    wrong = [cls.__name__ for cls in tasks if cls.pipelines and cls.training_step is not ClassifierModule.training_step]
    assert not wrong, f"declare pipelines = False on: {wrong}"
    overriding = {cls.__name__ for cls in tasks if cls.training_step is not ClassifierModule.training_step}
    assert {"AdversarialModule", "DistillModule", "AdaptModule", "GanModule"} <= overriding


@pytest.mark.slow  # long: runs in CI's slow pass (python -m pytest -m slow)
def test_monitor_val_loss_min_picks_the_lowest_val_loss(run_dir: Path, tmp_path: Path) -> None:
    """A high learning rate makes val/loss move both ways; the kept checkpoint is the epoch with the
    lowest val/loss, named by it; results.json says which metric picked it."""
    results = train_ok(
        run_dir,
        *FAST,
        "task.monitor=val/loss",
        "task.monitor_mode=min",
        "task.optimizer.lr=0.05",
        "task.scheduler=null",
    )
    with open(run_dir / "csv" / "metrics.csv", newline="") as file:
        rows = [r for r in csv.DictReader(file) if r.get("val/loss")]
    losses = {int(r["epoch"]): float(r["val/loss"]) for r in rows}
    assert len(losses) == 3 and len(set(losses.values())) == 3
    best = min(losses, key=losses.get)
    name = Path(results["checkpoint"]).name
    assert re.fullmatch(rf"epoch{best:03d}-loss{losses[best]:.4f}\.ckpt", name), (name, losses)
    assert results["monitor"] == {"metric": "val/loss", "mode": "min", "best": pytest.approx(losses[best])}
    bad = train(tmp_path / "bad", "task.monitor_mode=up")
    assert bad.returncode == 2 and "task.monitor_mode=up" in bad.stderr.strip().splitlines()[-1]
    assert "Traceback" not in bad.stderr and not (tmp_path / "bad").exists()


class TinyRegressor(Task):
    """A task the core does not know: regresses the digit's label as a number (MSE, no accuracy),
    and ships `self.body`, not `self.net` (the configured net is not used)."""

    def __init__(self, net: nn.Module, lr: float = 0.05, monitor: str = "val/mse", monitor_mode: str = "min") -> None:
        super().__init__(monitor, monitor_mode)
        self.input_shape = tuple(net.input_shape)
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(prod(self.input_shape), 16), nn.ReLU(), nn.Linear(16, 1))
        self.lr = lr
        self.val_mse, self.test_mse = MeanMetric(), MeanMetric()

    @property
    @override
    def shipped_net(self) -> nn.Module:
        return self.body

    @override
    def example_input(self, batch_size: int = 1) -> torch.Tensor:
        return torch.randn(batch_size, *self.input_shape, device=self.device)

    @classmethod
    @override
    def test_metric_names(cls) -> tuple[str, ...]:
        return ("test/mse",)

    def mse(self, batch: Any) -> torch.Tensor:
        return F.mse_loss(self.body(batch[0]).squeeze(1), batch[1].float())

    @override
    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return self.mse(batch)

    @override
    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self.val_mse.update(self.mse(batch), weight=len(batch[1]))
        self.log("val/mse", self.val_mse)

    @override
    def test_step(self, batch: Any, batch_idx: int) -> None:
        self.test_mse.update(self.mse(batch), weight=len(batch[1]))
        self.log("test/mse", self.test_mse)

    @override
    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.lr)


def test_a_task_the_core_does_not_know_runs_the_whole_pipeline(tmp_path: Path) -> None:
    target = f"{__name__}.TinyRegressor"
    cfg = compose_train(
        tmp_path,
        *FAST,
        "trainer.limit_train_batches=null",
        "compress=[prune]",
        "compress.prune.start_epoch=0",
        "compress.prune.end_epoch=1",
        "compress.prune.sparsity=0.5",
        "export=onnx",
    )
    with open_dict(cfg):
        cfg.task = OmegaConf.create({"_target_": target, "lr": 0.01, "monitor": "val/mse", "monitor_mode": "min"})
    results = run(cfg, {"recipe": "tiny", "task": "tiny_regressor"})
    assert results == json.loads((tmp_path / "results.json").read_text())
    assert set(results["metrics"]) == {"test/mse"} and results["metrics"]["test/mse"] < 7  # the mean: 8.3
    assert results["monitor"]["metric"] == "val/mse" and results["checkpoint"] == "checkpoints/last.ckpt"
    compression = results["compression"]  # the headline test metric, by its own name
    assert compression["steps"] == ["prune"] and {"mse_before", "mse_after"} <= set(compression)
    assert compression["mse_after"] == results["metrics"]["test/mse"] and compression["ratio"] > 1
    assert "body.1" in (tmp_path / "report.md").read_text()
    assert results["export"]["onnx"] == "export/model.onnx" and results["export"]["parity_max_abs_diff"] <= 1e-4
    # the shipped net as it shipped: pruned to the target, and the checkpoint rebuilds it exactly
    _, datamodule, module, _ = rebuild(str(tmp_path / results["checkpoint"]), trusted=[target])
    weights = [m.weight for m in module.body.modules() if isinstance(m, nn.Linear)]
    zeros = sum(int((w == 0).sum()) for w in weights) / sum(w.numel() for w in weights)
    assert zeros == pytest.approx(0.5, abs=0.01)
    assert score(cfg, module, datamodule) == results["metrics"]
