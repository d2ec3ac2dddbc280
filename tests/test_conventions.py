"""Lightning conventions: every task's checkpoint loads with `TaskClass.load_from_checkpoint(path)` and
predicts as recipes.evaluate's rebuild does; every overridden Lightning (and Hydra) hook is marked
`@override`; every private Lightning/Hydra name still in use (tests/helpers/private_api.py) still exists; and
a run prints none of the noise it used to (duplicate summary note, `Total FLOPs: 0`, onnxscript's
INFO lines, the eval-mode warning of a frozen backbone, paths cut with "..."); and lint does not depend on
the run output folders in the working tree."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger, WandbLogger
from lightning.pytorch.strategies import DDPStrategy
from lightning.pytorch.strategies.launchers import _MultiProcessingLauncher

import callbacks
import modules
import recipes
from modules.adapt import AdaptModule
from modules.classifier import ClassifierModule
from modules.distill import DistillModule
from modules.gan import GanModule
from modules.language_model import LanguageModel
from modules.task import Task
from recipes.assembly.restore import rebuild
from recipes.assembly.training import build_run
from recipes.stages.fit import fit
from recipes.stages.scoring import score
from tests.helpers.build import compose_train, quiet_trainer
from tests.helpers.private_api import USES
from tests.helpers.runs import train

# One short epoch: a real checkpoint in a few seconds.
TINY = (
    "trainer.max_epochs=1",
    "trainer.limit_train_batches=2",
    "trainer.limit_val_batches=1",
    "logger=csv",
    "callbacks.model_summary=null",
    "callbacks.lr_monitor=null",
    "callbacks.progress_bar=null",
    "trainer.enable_progress_bar=false",
)


def tiny_checkpoint(tmp_path: Path, name: str, *overrides: str, choices: dict[str, str]) -> str:
    """The checkpoint a real one-epoch run of recipes.train's build and fit stages ships, in-process."""
    cfg = compose_train(tmp_path / name, *TINY, *overrides)
    fitted = fit(build_run(cfg, choices), tmp_path / name)
    assert fitted is not None and fitted.shipped
    return fitted.shipped


def test_every_task_checkpoint_loads_with_load_from_checkpoint(tmp_path: Path) -> None:
    """classifier, distill, adapt, gan and lm: `Cls.load_from_checkpoint(path, weights_only=True)` gives the
    module recipes.evaluate rebuilds (same class, same outputs, same test metrics for a classifier)."""
    classifier = tiny_checkpoint(
        tmp_path, "classifier", "model.hidden=[32]", choices={"recipe": "baseline", "task": "classifier"}
    )
    checkpoints = {
        ClassifierModule: classifier,
        DistillModule: tiny_checkpoint(
            tmp_path,
            "distill",
            "task=distill",
            "model.hidden=[32]",
            f"task.teacher_ckpt={classifier}",
            choices={"recipe": "distill", "task": "distill"},
        ),
        AdaptModule: tiny_checkpoint(
            tmp_path,
            "adapt",
            "task=adapt",
            "data=digits_shift",
            "model.hidden=[32]",
            f"task.source_ckpt={classifier}",
            choices={"recipe": "adapt", "task": "adapt"},
        ),
        GanModule: tiny_checkpoint(
            tmp_path,
            "gan",
            "recipe=gan",
            "model=gan_mlp",
            f"task.feature_ckpt={classifier}",
            "trainer.check_val_every_n_epoch=1",
            "task.fd_samples=64",
            "task.val_samples=64",
            choices={"recipe": "gan", "task": "gan"},
        ),
        LanguageModel: tiny_checkpoint(
            tmp_path,
            "lm",
            "recipe=lm",
            "data.seq_len=16",
            "model.hidden=16",
            choices={"recipe": "lm", "task": "lm"},
        ),
    }
    for cls, path in checkpoints.items():
        loaded = cls.load_from_checkpoint(path, weights_only=True).eval()
        cfg, datamodule, evaluated, _ = rebuild(path)
        evaluated.eval()
        assert type(loaded) is cls and type(evaluated) is cls
        assert type(Task.load_from_checkpoint(path)) is cls  # the base takes any task
        example = evaluated.example_input(4)
        example = example if isinstance(example, tuple) else (example,)
        if isinstance(loaded, ClassifierModule):  # predict on real test images
            datamodule.setup("test")
            example = (next(iter(datamodule.test_dataloader()))[0],)
        with torch.no_grad():
            assert torch.equal(loaded(*example), evaluated.shipped_net(*example)), cls.__name__
    # What recipes.evaluate reports, from the module Lightning's way of loading gives.
    cfg, datamodule, evaluated, _ = rebuild(classifier)
    assert score(cfg, ClassifierModule.load_from_checkpoint(classifier), datamodule) == score(
        cfg, evaluated, datamodule
    )
    # A reference model that is not at hand: the task config is patched like Lightning's hparams kwargs.
    student = DistillModule.load_from_checkpoint(checkpoints[DistillModule], teacher_ckpt=None)
    assert student.teacher is None
    with pytest.raises(ValueError, match="holds a modules.classifier.ClassifierModule, not a DistillModule"):
        DistillModule.load_from_checkpoint(classifier)
    with pytest.raises(ValueError, match="weights_only=False is not supported"):
        ClassifierModule.load_from_checkpoint(classifier, weights_only=False)


def lightning_classes() -> list[type]:
    """Every class under modules/, callbacks/, recipes/ that derives from a Lightning or Hydra class."""
    found = []
    for package in (modules, callbacks, recipes):
        for info in pkgutil.walk_packages(package.__path__, f"{package.__name__}."):
            module = importlib.import_module(info.name)
            for _, cls in inspect.getmembers(module, inspect.isclass):
                if cls.__module__ == module.__name__ and any(
                    base.__module__.partition(".")[0] in ("lightning", "hydra") for base in cls.__mro__[1:]
                ):
                    found.append(cls)
    return found


def function_of(value: Any) -> Callable | None:
    if isinstance(value, (classmethod, staticmethod)):
        return value.__func__
    if isinstance(value, property):
        return value.fget
    return value if inspect.isfunction(value) else None


def test_every_overridden_hook_is_marked_override() -> None:
    """A method that overrides one of a base class (Lightning's hooks, strategy and logger methods, the
    project's own bases) carries typing_extensions.override, so a renamed hook is caught by type checkers."""
    classes = lightning_classes()
    assert {ClassifierModule, GanModule} <= set(classes)
    unmarked = []
    for cls in classes:
        for name, value in vars(cls).items():
            function = function_of(value)
            if function is None or (name.startswith("__") and name.endswith("__")):
                continue
            bases = [base for base in cls.__mro__[1:] if base is not object and name in vars(base)]
            if bases and not getattr(function, "__override__", False):
                unmarked.append(f"{cls.__module__}.{cls.__qualname__}.{name} (overrides {bases[0].__qualname__})")
    assert not unmarked, "add @override to:\n" + "\n".join(unmarked)


def resolve(owner: str) -> Any:
    module_name, _, path = owner.partition(":")
    found = importlib.import_module(module_name)
    for part in filter(None, path.split(".")):
        found = getattr(found, part)
    return found


def test_every_private_name_in_use_still_exists(tmp_path: Path) -> None:
    """tests/helpers/private_api.py lists each private Lightning/Hydra name the project uses: each is still
    there on the installed versions (on the class, or on an instance for attributes set in __init__)."""
    trainer = quiet_trainer()
    instances = {
        "lightning.pytorch:LightningModule": pl.LightningModule(),
        "lightning.pytorch:Trainer": trainer,
        "lightning.pytorch.loggers:CSVLogger": CSVLogger(tmp_path),
        "lightning.pytorch.loggers:WandbLogger": WandbLogger(offline=True, save_dir=str(tmp_path)),  # dev has wandb
        "lightning.pytorch.loops.training_epoch_loop:_TrainingEpochLoop": trainer.fit_loop.epoch_loop,
        "lightning.pytorch.strategies:DDPStrategy": DDPStrategy(model_averaging_period=4),
        "lightning.pytorch.strategies.launchers:_MultiProcessingLauncher": _MultiProcessingLauncher(
            DDPStrategy(), start_method="spawn"
        ),
    }
    missing = []
    for use in USES:
        holder = instances[use.owner] if use.instance else resolve(use.owner)
        if not hasattr(holder, use.name):
            missing.append(f"{use.owner}.{use.name} (used by {use.where}: {use.why})")
    assert not missing, "private names gone after an upgrade:\n" + "\n".join(missing)
    # The checkpoint entry recipes/assembly/loggers.py reads is where it reads it.
    assert "_batches_that_stepped" in trainer.fit_loop.state_dict()["epoch_loop.state_dict"]
    assert hasattr(trainer._logger_connector, "should_update_logs")
    assert hasattr(trainer._accelerator_connector, "use_distributed_sampler")


NOISE = (
    "Trainer already configured with model summary callbacks",  # Lightning's default summary skipped
    "Total FLOPs: 0",  # a summary without an example input
    "][INFO] - ",  # onnxscript / onnx_ir passes, through the run's logging config
    "module(s) in eval mode at the start of training",  # a backbone frozen before fit
)


def test_a_run_prints_none_of_the_old_noise(tmp_path: Path, feature_ckpt: str) -> None:
    """A baseline run from a checkpoint with a frozen backbone, exported to ONNX, in a run dir whose
    path is wider than a table cell: its output holds none of the noise lines, and the whole paths."""
    run_dir = tmp_path / ("a-run-dir-whose-path-is-longer-than-a-summary-table-cell-" + "x" * 40)
    proc = train(
        run_dir,
        "trainer.max_epochs=1",
        "trainer.limit_train_batches=2",
        "logger=csv",
        "callbacks.lr_monitor=null",
        f"task.init_ckpt={feature_ckpt}",
        "task.freeze_backbone=true",
        "export=onnx",
        quiet=True,
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-3000:]
    assert "Total FLOPs: " in output  # the summary still prints, with a count
    for noise in NOISE:
        assert noise not in output, f"{noise!r} in:\n{output[-4000:]}"
    summary = proc.stdout[proc.stdout.index("run summary") :]
    assert "..." not in summary and "…" not in summary, summary  # no path cut to fit a table cell
    assert f"run_dir: {run_dir}" in summary and "export: export/model.onnx" in proc.stdout


def test_lint_import_order_does_not_depend_on_run_output_folders(tmp_path: Path) -> None:
    """scripts/ with the project's lint config, beside the folders the README's runs create (runs/,
    outputs/, multirun/) and one named like the scripts' helper: ruff's import order still passes (a
    top-level folder once made `from runs import ...` first-party: 5 errors)."""
    root = Path(__file__).resolve().parent.parent
    shutil.copy(root / "pyproject.toml", tmp_path)
    shutil.copytree(root / "scripts", tmp_path / "scripts")
    for folder in ("runs/a", "outputs/b", "multirun/c", "launch", "runs_helper"):
        (tmp_path / folder).mkdir(parents=True)
    lint = [sys.executable, "-m", "ruff", "check", "--no-cache", "--select", "I", "."]
    proc = subprocess.run(lint, cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
