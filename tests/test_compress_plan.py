"""A compression plan is checked at start-up: order and combination of steps, each step's values and
schedule, and sizes against the net as the earlier steps will leave it."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra.core.hydra_config import HydraConfig

from recipes.build import build_training
from recipes.errors import RecipeError
from tests.conftest import compose_train, train_in_process

BAD_PLANS = [
    (["compress=[prune,svd]"], "svd must come before prune (factoring a pruned matrix makes it dense again); "
                               "use compress=[svd,prune]"),
    (["compress=[svd,hidden_prune]"], "use compress=[hidden_prune,svd]"),
    (["compress=[prune,dsd]", "trainer.max_epochs=30"], "prune and dsd both mask the weights; use one of them"),
    (["compress=[prune]", "compress.prune.sparsity=1.0"], "compress.prune.sparsity=1.0 must be in [0, 1)"),
    (["compress=[hidden_prune]", "compress.hidden_prune.amount=-0.1"], "compress.hidden_prune.amount=-0.1 must be in [0, 1)"),
    (["compress=[dsd]", "compress.dsd.sparsity=1.5"], "compress.dsd.sparsity=1.5 must be in [0, 1)"),
    (["compress=[svd]", "compress.svd.param_ratio=null", "compress.svd.rank=60"],
     "compress.svd.rank=60 is too large for layer net.1 (300x64 weights): at most 52 saves weights"),
    # after hidden_prune halves the layers, rank 40 no longer fits the 150 -> 50 layer
    (["compress=[hidden_prune,svd]", "compress.svd.param_ratio=null", "compress.svd.rank=40"],
     "compress.svd.rank=40 is too large for layer net.3 (50x150 weights)"),
    (["compress=[svd]", "compress.svd.energy=0.9"], "set exactly one of rank, energy, param_ratio"),
    (["compress=[svd,prune]", "compress.svd.epoch=8"], "svd changes the net until epoch 8 but prune starts at epoch 5"),
    (["compress=[hidden_prune]", "compress.hidden_prune.steps=20"], "must be < trainer.max_epochs=20"),
    (["compress=[dsd]"], "compress.dsd.redense_epoch=25 must be < trainer.max_epochs=20"),
    (["compress=[svd]", "trainer=ddp_sim", "strategy=async"],
     "compress=svd changes layer shapes during training, which strategy=async cannot follow"),
]


@pytest.mark.parametrize(("overrides", "message"), BAD_PLANS, ids=[" ".join(o) for o, _ in BAD_PLANS])
def test_bad_plan_is_refused_before_training(overrides: list[str], message: str, tmp_path: Path) -> None:
    cfg = compose_train(tmp_path, *overrides)
    with pytest.raises(RecipeError) as err:
        build_training(cfg, dict(HydraConfig.get().runtime.choices))
    assert message in str(err.value)


@pytest.mark.parametrize("overrides", [("compress=[hidden_prune,svd,prune]",), ("compress=[svd,dsd]", "trainer.max_epochs=30")])
def test_valid_plans_build(overrides: tuple[str, ...], tmp_path: Path) -> None:
    parts = build_training(compose_train(tmp_path, *overrides), dict(HydraConfig.get().runtime.choices))
    assert list(parts.compression) == [o for o in overrides[0][len("compress=["):-1].split(",")]


def test_bad_plan_exits_in_one_line_before_anything_is_written(run_dir: Path) -> None:
    proc = train_in_process(run_dir, "compress=[prune,svd]", "trainer.max_epochs=30")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("error: compress=[prune,svd]: svd must come before prune")
    assert not run_dir.exists()
