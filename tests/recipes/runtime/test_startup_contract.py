"""Start-up refusals: one line naming the value and the fix, exit 2, no traceback, no run dir left,
and nothing trained first (a prerequisite included). A misspelt key, an unwritable run dir and a refused
multirun are checked in a subprocess; the other values run the same entry in this process."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import pytest
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import get_object
from lightning.pytorch.strategies import SingleDeviceStrategy
from omegaconf import OmegaConf

from callbacks.surgery.structure import Restructurable
from recipes.assembly.startup_checks import check_startup
from recipes.errors import RecipeError
from recipes.runtime.overrides import group_options
from recipes.strategies.contract import DEFAULTS, RecipeStrategy, recipe_strategy
from recipes.strategies.model_avg import ModelAveragingStrategy
from tests.helpers import REPO
from tests.helpers.build import compose_train
from tests.helpers.faults import read_only, skip_unless_read_only_works
from tests.helpers.in_process import run_module_in_process
from tests.helpers.runs import assert_clean_failure, copy_run, run_module, train, train_in_process

CASES = {
    "negative seed": (["seed=-1"], ["seed=-1", "0 to 4294967295"]),
    "seed beyond uint32": (["seed=4294967296"], ["seed=4294967296", "e.g. seed=0"]),
    "negative max_epochs": (["trainer.max_epochs=-5"], ["trainer.max_epochs=-5", "e.g. trainer.max_epochs=20"]),
    "zero max_epochs": (["trainer.max_epochs=0"], ["trainer.max_epochs=0 trains nothing", "untrained"]),
    "batch size beyond a DataLoader": ([f"data.batch_size={sys.maxsize + 1}"], [f"data.batch_size={sys.maxsize + 1}"]),
    "misspelt key": (
        ["trainer.max_epoch=3"],
        ["trainer.max_epoch is not a config key", "did you mean trainer.max_epochs?"],
    ),
    "pipeline cannot train a distilled student": (
        ["strategy=pipeline", "recipe=distill"],
        ["strategy=pipeline", "DistillModule"],
    ),
    "pipeline cannot calibrate int8 stage by stage (qat)": (
        ["strategy=pipeline", "recipe=qat"],
        ["compress=qat ties each layer to its neighbours", "strategy=pipeline", "use strategy=ddp or single"],
    ),
    "pipeline cannot calibrate int8 stage by stage (prune then ptq)": (
        ["strategy=pipeline", "compress=[prune,ptq]", "export=int8"],
        ["compress=ptq ties each layer to its neighbours", "strategy=pipeline", "use strategy=ddp or single"],
    ),
}


@pytest.mark.parametrize("case", CASES)
def test_startup_refusal(case: str, run_dir: Path) -> None:
    overrides, expected = CASES[case]
    proc = (train if case == "misspelt key" else train_in_process)(run_dir, *overrides)
    assert_clean_failure(proc, run_dir, *expected)
    assert proc.returncode == 2
    assert "training the teacher" not in proc.stdout + proc.stderr


def test_a_prerequisite_the_strategy_cannot_train_is_refused_before_anything_trains(run_dir: Path) -> None:
    """The run's own task suits strategy=pipeline, the source model it would train first does not: refused
    at start-up, naming the prerequisite, before that model trains."""
    proc = train_in_process(run_dir, "recipe=finetune", "strategy=pipeline", "task@prerequisites.init.task=adversarial")
    assert_clean_failure(proc, run_dir, "prerequisites.init", "strategy=pipeline", "AdversarialModule")
    assert proc.returncode == 2 and "training the init model" not in proc.stdout + proc.stderr


def strategy_classes() -> dict[str, type | None]:
    """Each conf/strategy option's `_target_` class (None: Lightning picks its own, strategy=single)."""
    found = {}
    for name in group_options("strategy"):
        target = OmegaConf.load(REPO / "conf" / "strategy" / f"{name}.yaml").get("_target_")
        found[name] = get_object(target) if target else None
    return found


def test_every_strategy_declares_the_strategy_contract() -> None:
    """Each strategy a config names derives from RecipeStrategy (so it satisfies the surgery's
    Restructurable too); Lightning's own, for strategy=single, is read as the contract's defaults."""
    classes = strategy_classes()
    assert classes.pop("single") is None and set(classes) == {"async", "ddp", "model_avg", "pipeline"}
    for name, cls in classes.items():
        assert issubclass(cls, RecipeStrategy) and issubclass(cls, Restructurable), name
        assert recipe_strategy(cls) is cls, name
    assert isinstance(ModelAveragingStrategy(), Restructurable)
    assert (
        recipe_strategy(SingleDeviceStrategy()) is DEFAULTS and recipe_strategy(SingleDeviceStrategy) is RecipeStrategy
    )
    assert DEFAULTS.restructurable and not DEFAULTS.splits_net and DEFAULTS.comm_bytes is None
    assert DEFAULTS.parallel_extra == {} and DEFAULTS.collective_timeout is None and not DEFAULTS.ranks_met


@pytest.mark.parametrize(
    ("overrides", "refused_by"),
    [
        (["recipe=gan"], {"async", "model_avg", "pipeline"}),  # steps its own optimizers; not a plain step
        (["compress=[svd]"], {"async", "pipeline"}),  # changes layer shapes mid-fit (restructurable)
        (["compress=[qat]"], {"pipeline"}),  # couples layers (splits_net)
        (["recipe=baseline"], set()),
    ],
)
def test_the_start_up_checks_refuse_what_each_strategy_declares(
    overrides: list[str], refused_by: set[str], tmp_path: Path
) -> None:
    """Every strategy option against a real composed config: refused exactly by the strategies whose
    declarations (check_task, restructurable, splits_net) exclude it, in one line naming the strategy."""
    refused = set()
    for name in strategy_classes():
        cfg = compose_train(tmp_path, *overrides, f"strategy={name}")
        try:
            check_startup(cfg, dict(HydraConfig.get().runtime.choices))
        except RecipeError as err:
            assert f"strategy={name}" in str(err) and "\n" not in str(err), (name, str(err))
            refused.add(name)
    assert refused == refused_by


@pytest.mark.skipif(torch.cuda.is_available() or torch.backends.mps.is_available(), reason="this machine has a GPU")
def test_gpu_preset_without_a_gpu(run_dir: Path) -> None:
    proc = train_in_process(run_dir, "trainer=gpu")
    assert_clean_failure(proc, run_dir, "trainer.accelerator=gpu", "trainer=cpu")
    assert proc.returncode == 2


def test_run_dir_that_cannot_be_created(tmp_path: Path) -> None:
    """A run dir below a regular file (root ignores chmod, so a read-only folder proves nothing here)."""
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    proc = train(blocker / "run")
    assert_clean_failure(proc, None, f"hydra.run.dir={blocker / 'run'}", "is a file")
    assert proc.returncode == 2 and blocker.is_file()


@pytest.mark.parametrize("held", [["app.log", "old.log"], []], ids=["logs", "empty"])
def test_a_refused_run_keeps_a_folder_that_existed(tmp_path: Path, held: list[str]) -> None:
    """The user's own folder as hydra.run.dir: the refusal takes out what the run added (Hydra's
    .hydra/ and train.log, the lock) and nothing else; the folder and its files stay."""
    folder = tmp_path / "mylogs"
    folder.mkdir()
    for name in held:
        (folder / name).write_text(f"{name} of the user\n")
    proc = train_in_process(folder, "seed=-1")
    assert_clean_failure(proc, None, "seed=-1")
    assert proc.returncode == 2
    assert sorted(p.name for p in folder.iterdir()) == held
    assert all((folder / name).read_text() == f"{name} of the user\n" for name in held)


def test_a_refused_run_removes_the_parents_it_made_and_no_other(tmp_path: Path) -> None:
    (tmp_path / "mine").mkdir()  # an empty folder of the user's, above the new ones
    proc = train_in_process(tmp_path / "mine" / "new" / "deeper" / "run", "seed=-1")
    assert_clean_failure(proc, None, "seed=-1")
    assert (tmp_path / "mine").is_dir() and not any((tmp_path / "mine").iterdir())


@pytest.mark.parametrize("mode", ["run", "multirun"])
def test_a_run_dir_name_longer_than_the_file_system_allows(tmp_path: Path, mode: str) -> None:
    """A 300-character folder name (ENAMETOOLONG): one line naming the limit, exit 2, nothing created."""
    folder = tmp_path / ("a" * 300)
    key = f"hydra.{'sweep' if mode == 'multirun' else 'run'}.dir"
    args = ["-m", "seed=0,1", f"{key}={folder}"] if mode == "multirun" else [f"{key}={folder}"]
    proc = run_module_in_process("recipes.train", *args)
    assert_clean_failure(proc, None, f"{key}={folder} cannot be created", "a folder name of 300 bytes")
    assert proc.stderr.strip().endswith(f"than the 255 its file system allows; choose a shorter {key}")
    assert proc.returncode == 2 and list(tmp_path.iterdir()) == []


def test_a_read_only_checkpoints_folder_is_refused_at_start(two_epoch_run: Path, tmp_path: Path) -> None:
    """Resuming a run whose checkpoints/ is read-only (a read-only bind mount as root, else chmod) is
    refused before anything runs, in one line naming the folder, exit 2, the run dir untouched, instead of
    failing at the first checkpoint an epoch later."""
    skip_unless_read_only_works(tmp_path / "scratch")
    run_dir = copy_run(two_epoch_run, tmp_path)
    files = sorted((p.relative_to(run_dir), p.stat().st_mtime_ns) for p in run_dir.rglob("*"))
    with read_only(run_dir / "checkpoints"):
        proc = train_in_process(run_dir, "trainer.max_epochs=3", "ckpt_path=last")
    reason = "Read-only file system" if os.geteuid() == 0 else "Permission denied"
    assert_clean_failure(proc, None, f"cannot be written ({reason} in {run_dir / 'checkpoints'})", "make it writable")
    assert proc.returncode == 2
    assert sorted((p.relative_to(run_dir), p.stat().st_mtime_ns) for p in run_dir.rglob("*")) == files


def test_refused_multirun_leaves_no_sweep_dir(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    proc = run_module("recipes.train", "--multirun", "seed=0,1", "trainer=ddp_sim", f"hydra.sweep.dir={sweep}")
    assert_clean_failure(proc, None, "multirun")
    assert not sweep.exists(), sorted(p.name for p in sweep.rglob("*"))


def test_train_log_holds_the_runs_log_lines(run_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Lightning's loggers do not propagate to the root's train.log handler in a fresh `python -m
    recipes.train` (Lightning is imported before logging is set up; under pytest they do): as there, so
    that the lines reach train.log only through recipes.runtime.libraries.log_libraries_to_file."""
    for name in ("lightning.pytorch", "lightning.fabric"):
        monkeypatch.setattr(logging.getLogger(name), "propagate", False)
    proc = train_in_process(run_dir, "debug=fast_dev_run")
    assert proc.returncode == 0, proc.stderr[-2000:]
    log = (run_dir / "train.log").read_text()
    assert "GPU available" in log and "fast_dev_run" in log, log
