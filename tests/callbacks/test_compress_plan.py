"""A compression plan is checked at start-up: order and combination of steps, each step's values and
schedule, and sizes against the net as the earlier steps will leave it."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra.core.hydra_config import HydraConfig
from lightning.pytorch.callbacks import EarlyStopping
from torch import nn

from callbacks.dsd import DenseSparseDense
from callbacks.plan import check_compression_plan
from callbacks.prune import MagnitudePruning
from callbacks.step import CompressionStep, Stage
from recipes.assembly.startup_checks import check_startup
from recipes.assembly.training import build_training
from recipes.errors import RecipeError
from tests.helpers.build import compose_train
from tests.helpers.runs import train_in_process

BAD_PLANS = [
    (
        ["compress=[prune,svd]"],
        "svd must come before prune (factoring a pruned matrix makes it dense again); use compress=[svd,prune]",
    ),
    (["compress=[svd,hidden_prune]"], "use compress=[hidden_prune,svd]"),
    (["compress=[prune,dsd]", "trainer.max_epochs=30"], "prune and dsd both mask the weights; use one of them"),
    (["compress=[prune]", "compress.prune.sparsity=1.0"], "compress.prune.sparsity=1.0 must be in [0, 1)"),
    (
        ["compress=[hidden_prune]", "compress.hidden_prune.amount=-0.1"],
        "compress.hidden_prune.amount=-0.1 must be in [0, 1)",
    ),
    (["compress=[dsd]", "compress.dsd.sparsity=1.5"], "compress.dsd.sparsity=1.5 must be in [0, 1)"),
    (
        ["compress=[svd]", "compress.svd.param_ratio=null", "compress.svd.rank=60"],
        "compress.svd.rank=60 is too large for layer net.1 (300x64 weights): at most 52 saves weights",
    ),
    # after hidden_prune halves the layers, rank 40 no longer fits the 150 -> 50 layer
    (
        ["compress=[hidden_prune,svd]", "compress.svd.param_ratio=null", "compress.svd.rank=40"],
        "compress.svd.rank=40 is too large for layer net.3 (50x150 weights)",
    ),
    (["compress=[svd]", "compress.svd.energy=0.9"], "set exactly one of rank, energy, param_ratio"),
    (["compress=[svd,prune]", "compress.svd.epoch=8"], "svd changes the net until epoch 8 but prune starts at epoch 5"),
    (["compress=[hidden_prune]", "compress.hidden_prune.steps=20"], "must be < trainer.max_epochs=20"),
    (["compress=[dsd]"], "compress.dsd.redense_epoch=25 must be < trainer.max_epochs=20"),
    (
        ["compress=[svd]", "trainer=ddp_sim", "strategy=async"],
        "compress=svd changes layer shapes during training, which strategy=async cannot follow",
    ),
]


@pytest.mark.parametrize(("overrides", "message"), BAD_PLANS, ids=[" ".join(o) for o, _ in BAD_PLANS])
def test_bad_plan_is_refused_before_training(overrides: list[str], message: str, tmp_path: Path) -> None:
    """As recipes.train checks and builds a run: the start-up checks (the strategy's declarations), then
    the build (the plan against the net)."""
    cfg = compose_train(tmp_path, *overrides)
    choices = dict(HydraConfig.get().runtime.choices)
    with pytest.raises(RecipeError) as err:
        check_startup(cfg, choices)
        build_training(cfg, choices)
    assert message in str(err.value)


@pytest.mark.parametrize(
    "overrides", [("compress=[hidden_prune,svd,prune]",), ("compress=[svd,dsd]", "trainer.max_epochs=30")]
)
def test_valid_plans_build(overrides: tuple[str, ...], tmp_path: Path) -> None:
    parts = build_training(compose_train(tmp_path, *overrides), dict(HydraConfig.get().runtime.choices))
    assert list(parts.compression) == [o for o in overrides[0][len("compress=[") : -1].split(",")]


def test_bad_plan_exits_in_one_line_before_anything_is_written(run_dir: Path) -> None:
    proc = train_in_process(run_dir, "compress=[prune,svd]", "trainer.max_epochs=30")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("error: compress=[prune,svd]: svd must come before prune")
    assert not run_dir.exists()


class _Precision(CompressionStep):
    """A step that only this test knows: the plan orders it from its declarations alone."""

    step = "toy_precision"
    stage = Stage.PRECISION
    order_reason = "toy reason"
    excludes = {"dsd": "cannot share a plan with DSD"}

    def epochs(self) -> tuple[int, int]:
        return 15, 15

    def check(self, net: nn.Module, max_epochs: int) -> None:
        pass


def _steps(*names: str) -> dict[str, CompressionStep]:
    made = {
        "prune": lambda: MagnitudePruning(0.5, 1, 10),
        "dsd": lambda: DenseSparseDense(0.5, 1, 10),
        "toy_precision": _Precision,
    }
    return {name: made[name]() for name in names}


def test_a_new_step_joins_a_plan_by_its_declarations() -> None:
    net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    check_compression_plan(_steps("prune", "toy_precision"), net, max_epochs=20)
    with pytest.raises(
        ValueError,
        match=r"prune must come before toy_precision \(prune the weights .*use "
        r"compress=\[prune,toy_precision\]",
    ):
        check_compression_plan(_steps("toy_precision", "prune"), net, max_epochs=20)
    with pytest.raises(ValueError, match="dsd and toy_precision cannot share a plan with DSD; use one of them"):
        check_compression_plan(_steps("dsd", "toy_precision"), net, max_epochs=20)


def test_a_callback_that_is_not_a_step_is_refused() -> None:
    net = nn.Sequential(nn.Linear(4, 2))
    with pytest.raises(ValueError, match="compress.bar: .*EarlyStopping is not a compression step"):
        check_compression_plan({"bar": EarlyStopping(monitor="val/acc")}, net, max_epochs=20)
