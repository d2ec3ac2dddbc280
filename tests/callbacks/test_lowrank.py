"""SVD low-rank factorization: exact on low-rank weights, rank rules, the recipe end to end (fewer
weights, accuracy, export, evaluate) and resume across the factoring epoch."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from callbacks.lowrank import LowRankFactorization, energy_rank, max_useful_rank
from callbacks.surgery.structure import factored
from modules.nets.mlp import MLP
from tests.helpers.runs import run_module, train_ok

FAST = ("callbacks.model_summary=null", "callbacks.lr_monitor=null", "logger=csv")
SCHEDULE = ("recipe=svd", "trainer.max_epochs=6", "compress.svd.epoch=2")


def test_svd_of_a_low_rank_linear_is_exact() -> None:
    torch.manual_seed(0)
    layer = nn.Linear(30, 40)
    with torch.no_grad():
        layer.weight.copy_(torch.randn(40, 5) @ torch.randn(5, 30))  # rank 5
    pair = factored(layer, 5)
    assert [tuple(m.weight.shape) for m in pair] == [(5, 30), (40, 5)] and pair[0].bias is None
    x = torch.randn(16, 30)
    assert torch.allclose(pair(x), layer(x), atol=1e-5)
    assert not torch.allclose(factored(layer, 4)(x), layer(x), atol=1e-3)  # one rank short is not


def test_svd_of_a_low_rank_conv_is_exact() -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(8, 16, 3, stride=2, padding=1)
    with torch.no_grad():
        conv.weight.copy_((torch.randn(16, 3) @ torch.randn(3, 8 * 9)).reshape(16, 8, 3, 3))  # rank 3
    pair = factored(conv, 3)
    assert tuple(pair[0].weight.shape) == (3, 8, 3, 3) and tuple(pair[1].weight.shape) == (16, 3, 1, 1)
    x = torch.randn(2, 8, 9, 9)
    assert torch.allclose(pair(x), conv(x), atol=1e-5)


def test_rank_rules() -> None:
    assert energy_rank(torch.tensor([4.0, 3.0]), 0.64) == 1  # 16 / 25 = 0.64
    assert energy_rank(torch.tensor([4.0, 3.0]), 0.65) == 2
    assert max_useful_rank(nn.Linear(64, 300)) == 52  # 53 * 364 > 64 * 300
    net = MLP((1, 8, 8), 10, hidden=[300, 100])
    step = LowRankFactorization(param_ratio=0.3)
    ranks = step.factor(net)
    assert ranks == {"1": 15, "3": 22}  # floor(0.3 * m * n / (m + n)); the head is left alone
    assert sum(p.numel() for p in net.parameters()) < 0.5 * 50610
    with pytest.raises(ValueError, match="exactly one of"):
        LowRankFactorization(rank=4, energy=0.9)
    with pytest.raises(ValueError, match=r"compress.svd.rank=60 is too large for layer net.1 \(300x64"):
        LowRankFactorization(rank=60).check(MLP((1, 8, 8), 10), max_epochs=20)


@pytest.mark.slow  # long: runs in CI's slow pass (python -m pytest -m slow)
def test_svd_recipe_factors_trains_exports_and_evaluates(run_dir: Path, tmp_path: Path) -> None:
    results = train_ok(run_dir, *SCHEDULE, *FAST, "export=onnx")
    comp = results["compression"]
    assert comp["steps"] == ["svd"] and comp["params"] <= 0.5 * comp["dense_params"]
    assert comp["acc_after"] == results["metrics"]["test/acc"] > 0.8
    assert 0 < comp["acc_before"] <= 1 and comp["per_step"][0]["step"] == "svd"
    assert results["export"]["top1_agreement"] == 1.0 and results["export"]["parity_max_abs_diff"] <= 1e-4
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["recipe"]["structure"] == [{"kind": "factor", "step": "svd", "ranks": {"1": 15, "3": 22}}]
    assert tuple(ckpt["state_dict"]["net.1.0.weight"].shape) == (15, 64)
    out = tmp_path / "eval.json"
    proc = run_module("recipes.evaluate", f"ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}", f"out={out}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(out.read_text())["metrics"]["test/acc"] == results["metrics"]["test/acc"]


@pytest.mark.slow  # long: runs in CI's slow pass (python -m pytest -m slow)
def test_resume_across_the_factoring_epoch(tmp_path: Path) -> None:
    """Interrupted before factoring, resumed with ckpt_path=last: the same factors and weights."""
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    train_ok(straight, *SCHEDULE, *FAST, "trainer.max_epochs=4")
    train_ok(resumed, *SCHEDULE, *FAST, "trainer.max_epochs=4", "trainer.max_steps=60")  # stops after epoch 3
    mid = torch.load(resumed / "checkpoints" / "last.ckpt", weights_only=True)
    assert mid["epoch"] == 2 and "net.1.0.weight" in mid["state_dict"]  # factored at epoch 2, saved after it
    train_ok(resumed, *SCHEDULE, *FAST, "trainer.max_epochs=4", "ckpt_path=last")
    wa = torch.load(straight / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    wb = torch.load(resumed / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    assert set(wa) == set(wb)
    for key in wa:
        assert torch.allclose(wa[key], wb[key], atol=1e-6), key
