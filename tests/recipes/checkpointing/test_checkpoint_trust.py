"""A config read back from a checkpoint is data: a checkpoint that loads with weights_only=True but
whose saved config names code this project does not ship (`builtins.open`, `os.system` wrapped in
a partial, `torch.load`, an unknown package) is refused in one line before anything is imported or
built, by recipes.evaluate, recipes.export and every reference-model path (task.*_ckpt)."""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from recipes.assembly.restore import rebuild
from recipes.assembly.tasks import reference_net
from recipes.checkpointing.trust import saved_config, shipped_targets
from recipes.errors import RecipeError
from tests.helpers import REPO
from tests.helpers.runs import run_module, train_in_process


@pytest.fixture
def genuine(feature_ckpt: str) -> dict[str, Any]:
    """A checkpoint as recipes.train writes it (baseline MLP on digits, untrained weights)."""
    return torch.load(feature_ckpt, weights_only=True)


def with_node(ckpt: dict[str, Any], dotted: str, node: Any) -> dict[str, Any]:
    """A copy of `ckpt` whose `recipe` entry has `node` at `dotted` (e.g. config.model.hidden)."""
    ckpt = copy.deepcopy(ckpt)
    *parents, last = dotted.split(".")
    at = ckpt["recipe"]
    for name in parents:
        at = at[name]
    at[last] = node
    return ckpt


class Traps:
    """Files whose change would show that a payload ran, and an importable package that marks its import."""

    def __init__(self, root: Path) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.victim = root / "victim.txt"
        self.victim.write_text("precious\n")
        self.shell_marker = root / "shell_ran"
        self.pickle_marker = root / "pickle_ran"
        self.pickle = root / "payload.pt"
        torch.save(_OpensFile(str(self.pickle_marker)), self.pickle)
        self.site = root / "site"
        package = self.site / "evilpkg"
        package.mkdir(parents=True)
        self.import_marker = root / "evilpkg_imported"
        (package / "__init__.py").write_text(f"open({str(self.import_marker)!r}, 'w').close()\n")
        (package / "module.py").write_text("class Thing:\n    pass\n")

    def untouched(self) -> bool:
        return (
            self.victim.read_text() == "precious\n"
            and not self.shell_marker.exists()
            and not self.pickle_marker.exists()
            and not self.import_marker.exists()
            and "evilpkg" not in sys.modules
            and not (self.victim.parent / "x").exists()
        )


class _OpensFile:
    """Pickled with a reduce that creates a file: what torch.load(weights_only=False) would run."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple:
        return open, (self.path, "w")


def payloads(traps: Traps) -> dict[str, tuple[str, Any, str]]:
    """name -> (where in the recipe entry, node, what the refusal must name)."""
    return {
        "open": (
            "config.model.hidden",
            {"_target_": "builtins.open", "file": str(traps.victim), "mode": "w"},
            "model.hidden._target_='builtins.open'",
        ),
        "partial_system": (
            "config.task.optimizer",
            {"_target_": "os.system", "_partial_": True, "command": f"touch {traps.shell_marker}"},
            "task.optimizer._target_='os.system'",
        ),
        "functools_partial": (
            "config.task.scheduler",
            {
                "_target_": "functools.partial",
                "_args_": [{"_target_": "hydra.utils.get_method", "path": "os.system"}, f"touch {traps.shell_marker}"],
            },
            "task.scheduler._target_='functools.partial', task.scheduler._args_[0]._target_='hydra.utils.get_method'",
        ),
        "torch_load": (
            "config.model.hidden",
            {"_target_": "torch.load", "f": str(traps.pickle), "weights_only": False},
            "model.hidden._target_='torch.load'",
        ),
        "unknown_module": ("config.model._target_", "evilpkg.module.Thing", "model._target_='evilpkg.module.Thing'"),
        "in_a_list": (
            "config.model.hidden",
            [32, {"_target_": "builtins.open", "file": str(traps.victim), "mode": "w"}],
            "model.hidden[1]._target_='builtins.open'",
        ),
        "interpolation": ("config.model.hidden", "${oc.env:HOME}", "interpolation, model.hidden='${oc.env:HOME}'"),
        # shipped targets, in a part that would build them where the checkpoint chooses
        "logger_as_data": (
            "config.data",
            {
                "_target_": "recipes.stages.tracking.LocalMLFlowLogger",
                "tracking_uri": f"sqlite:///{traps.victim.parent}/x/y.db",
            },
            "data._target_='recipes.stages.tracking.LocalMLFlowLogger', which this project ships for another part of a run (logger)",
        ),
        "net_as_data": ("config.data._target_", "modules.nets.mlp.MLP", "model), not for data"),
        "transform_as_data": (
            "config.data._target_",
            "torchvision.transforms.v2.RandomCrop",
            "data._target_='torchvision.transforms.v2.RandomCrop', which is not a LightningDataModule",
        ),
        "task_as_model": ("config.model._target_", "modules.classifier.ClassifierModule", "(task), not for model"),
        "no_model": ("config.model", None, "has no model._target_ to build its model from"),
        # a structure record that would allocate 300,000 x 64 GB of weights, or names no edit at all
        "structure_huge": (
            "structure",
            [{"kind": "resize", "shapes": {"1.weight": [300_000_000_000, 64]}}],
            "'recipe.structure' record is malformed (edit 0 resizes '1.weight' from [300, 64] to",
        ),
        "structure_unknown": ("structure", [{"kind": "rm -rf"}], "edit 0 is 'rm -rf', not a factor"),
        "structure_bad_rank": (
            "structure",
            [{"kind": "factor", "ranks": {"1": 10**9}}],
            "rank 1000000000, outside 1..64",
        ),
        "structure_no_layer": ("structure", [{"kind": "factor", "ranks": {"9.9": 2}}], "'9.9', which is not a layer"),
        "huge_model": (
            "config.model.hidden",
            [10**7, 10**7],
            "builds a net of 100,000,760,000,010 weights, more than the 50,610 stored",
        ),
        "data_entry": (
            "data.num_classes",
            {"_target_": "builtins.open", "file": str(traps.victim), "mode": "w"},
            "'recipe.data' entry",
        ),
    }


PAYLOADS = [
    "open",
    "partial_system",
    "functools_partial",
    "torch_load",
    "unknown_module",
    "in_a_list",
    "interpolation",
    "logger_as_data",
    "net_as_data",
    "transform_as_data",
    "task_as_model",
    "no_model",
    "structure_huge",
    "structure_unknown",
    "structure_bad_rank",
    "structure_no_layer",
    "huge_model",
    "data_entry",
]


def hostile(genuine: dict[str, Any], traps: Traps, name: str, folder: Path) -> tuple[Path, str]:
    where, node, named = payloads(traps)[name]
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.ckpt"
    torch.save(with_node(genuine, where, node), path)
    torch.load(path, weights_only=True)  # the premise: it passes the pickle guard
    return path, named


def test_the_allow_list_is_what_the_shipped_yaml_builds(genuine: dict[str, Any]) -> None:
    shipped = shipped_targets()
    assert {
        "modules.nets.mlp.MLP",
        "modules.distill.DistillModule",
        "torch.optim.AdamW",
        "recipes.data.digits.DigitsDataModule",
    } <= shipped
    assert not {"builtins.open", "os.system", "torch.load", "functools.partial"} & shipped
    assert saved_config(genuine, "ckpt_path", "x.ckpt").model._target_ == "modules.nets.mlp.MLP"


def test_parts_no_loader_builds_may_name_the_users_own_classes(genuine: dict[str, Any]) -> None:
    """A run's own callback (e.g. tests.helpers.slow_worker.SlowWorker) is never built from a checkpoint, so it
    does not make the checkpoint unreadable; the same target where a loader would build it is refused."""
    mine = {"_target_": "mypkg.callbacks.Mine"}
    assert saved_config(with_node(genuine, "config.callbacks.mine", mine), "ckpt_path", "x.ckpt").callbacks.mine
    with pytest.raises(RecipeError, match="model.hidden._target_='mypkg.callbacks.Mine'"):
        saved_config(with_node(genuine, "config.model.hidden", mine), "ckpt_path", "x.ckpt")


@pytest.mark.parametrize("entry_point", ["rebuild", "reference_net"])
@pytest.mark.parametrize("name", PAYLOADS)
def test_a_hostile_config_is_refused_before_anything_runs(
    name: str, entry_point: str, genuine: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each payload, through evaluate/export's rebuild and through a teacher / source / init checkpoint."""
    traps = Traps(tmp_path)
    monkeypatch.syspath_prepend(str(traps.site))  # evilpkg is importable: refusing must not import it
    path, named = hostile(genuine, traps, name, tmp_path / "ckpts")
    with pytest.raises(RecipeError) as refused:
        if entry_point == "rebuild":
            rebuild(str(path))
        else:
            reference_net(str(path), "task.teacher_ckpt", (1, 8, 8))
    message = str(refused.value)
    key = "ckpt_path" if entry_point == "rebuild" else "task.teacher_ckpt"
    assert message.startswith(f"{key}={path}: its ") and named in message and "\n" not in message
    assert traps.untouched()


def test_a_target_where_no_loader_builds_is_never_imported(
    genuine: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Unknown targets in the parts no loader builds (callbacks, strategy, trainer plugins) are
    ignored: the checkpoint evaluates, and the package they name is never imported."""
    traps = Traps(tmp_path)
    monkeypatch.syspath_prepend(str(traps.site))
    evil = {"_target_": "evilpkg.module.Thing"}
    ckpt = with_node(genuine, "config.callbacks.evil", evil)
    ckpt = with_node(ckpt, "config.strategy", evil)
    ckpt = with_node(ckpt, "config.trainer.plugins", [evil])
    torch.save(ckpt, tmp_path / "ignored.ckpt")
    _, _, module, _ = rebuild(str(tmp_path / "ignored.ckpt"))
    assert module.shipped_net is not None
    assert traps.untouched()


def test_a_trusted_target_is_built_and_nothing_else_is(genuine: dict[str, Any], tmp_path: Path) -> None:
    """trusted_targets (the loading user's own setting) lets a class the YAML does not use through."""
    conf = Path(__file__).resolve().parents[3] / "conf"
    assert not [p for p in conf.rglob("*.yaml") if "torch.optim.Adagrad" in p.read_text()]  # the test's premise
    other = {"_target_": "torch.optim.Adagrad", "_partial_": True, "lr": 0.1}
    adagrad = with_node(genuine, "config.task.optimizer", other)
    with pytest.raises(RecipeError, match=r"_target_='torch.optim.Adagrad'.*trusted_targets=\[torch.optim.Adagrad\]"):
        saved_config(adagrad, "ckpt_path", "x.ckpt")
    trusted = saved_config(adagrad, "ckpt_path", "x.ckpt", ["torch.optim.Adagrad"])
    assert trusted.task.optimizer._target_ == "torch.optim.Adagrad"


def test_a_checkpoint_cannot_trust_targets_itself(genuine: dict[str, Any], tmp_path: Path) -> None:
    """A checkpoint whose own config says trusted_targets=[builtins.open] and points its fine-tuning
    start (task.init_ckpt, rebuilt by evaluate too) at a hostile file: only the loader's setting counts."""
    traps = Traps(tmp_path)
    hostile_init, _ = hostile(genuine, traps, "open", tmp_path / "ckpts")
    smuggler = with_node(
        with_node(genuine, "config.trusted_targets", ["builtins.open"]), "config.task.init_ckpt", str(hostile_init)
    )
    torch.save(smuggler, tmp_path / "smuggler.ckpt")
    with pytest.raises(RecipeError, match=rf"^task.init_ckpt={hostile_init}: .*'builtins.open'"):
        rebuild(str(tmp_path / "smuggler.ckpt"))
    assert traps.untouched()


# --- the real command lines: one line on stderr, exit 2, nothing run and nothing written ---------------
def assert_refused(proc: Any, named: str) -> None:
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and named in lines[0], proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr + proc.stdout


def test_evaluate_refuses_a_checkpoint_that_opens_a_file(genuine: dict[str, Any], tmp_path: Path) -> None:
    traps = Traps(tmp_path / "traps")
    path, named = hostile(genuine, traps, "open", tmp_path / "ckpts")
    work = tmp_path / "cwd"
    work.mkdir()
    proc = run_module("recipes.evaluate", f"ckpt_path={path}", cwd=work, env={"PYTHONPATH": str(REPO)})
    assert_refused(proc, named)
    assert traps.untouched() and not list(work.iterdir())


def test_export_refuses_a_checkpoint_that_runs_a_shell_command(genuine: dict[str, Any], tmp_path: Path) -> None:
    traps = Traps(tmp_path / "traps")
    path, named = hostile(genuine, traps, "partial_system", tmp_path / "run" / "checkpoints")
    assert_refused(run_module("recipes.export", f"ckpt_path={path}", "export=onnx"), named)
    assert traps.untouched() and not (tmp_path / "run" / "export").exists()


def test_train_refuses_a_teacher_from_an_unknown_package(
    genuine: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In this process, so that `evilpkg` (importable here) would show in sys.modules had it been imported."""
    traps = Traps(tmp_path / "traps")
    monkeypatch.syspath_prepend(str(traps.site))
    path, named = hostile(genuine, traps, "unknown_module", tmp_path / "ckpts")
    run_dir = tmp_path / "run"
    proc = train_in_process(run_dir, "recipe=distill", f"task.teacher_ckpt={path}")
    assert_refused(proc, f"task.teacher_ckpt={path}: its saved config asks to build {named}")
    assert traps.untouched() and not run_dir.exists()


@pytest.mark.parametrize("entry_point", ["recipes.evaluate", "recipes.export", "recipes.attack", "recipes.generate"])
def test_no_entry_point_builds_a_logger_as_data(genuine: dict[str, Any], tmp_path: Path, entry_point: str) -> None:
    """A shipped logger whose tracking_uri names a database of the checkpoint's choosing, as its data:
    refused in one line by every loader that reads a checkpoint, and nothing created anywhere."""
    traps = Traps(tmp_path / "traps")
    path, named = hostile(genuine, traps, "logger_as_data", tmp_path / "run" / "checkpoints")
    work = tmp_path / "cwd"
    work.mkdir()
    proc = run_module(entry_point, f"ckpt_path={path}", cwd=work, env={"PYTHONPATH": str(REPO)})
    assert_refused(proc, named)
    assert traps.untouched() and not list(work.iterdir())
    assert sorted(p.name for p in (tmp_path / "run").rglob("*")) == ["checkpoints", path.name]


@pytest.mark.slow  # long: runs in CI's slow pass (python -m pytest -m slow)
def test_evaluate_builds_a_target_the_user_trusts(genuine: dict[str, Any], tmp_path: Path) -> None:
    """The escape hatch on the command line of the person loading the file: a genuine checkpoint with
    an optimizer the YAML does not ship evaluates once that optimizer is trusted."""
    path = tmp_path / "sgd.ckpt"
    torch.save(
        with_node(genuine, "config.task.optimizer", {"_target_": "torch.optim.SGD", "_partial_": True, "lr": 0.1}), path
    )
    proc = run_module("recipes.evaluate", f"ckpt_path={path}", "trusted_targets=[torch.optim.SGD]")
    assert proc.returncode == 0, proc.stderr[-2000:]
    metrics = json.loads(proc.stdout.strip().splitlines()[-1])
    assert 0 <= metrics["test/acc"] <= 1
