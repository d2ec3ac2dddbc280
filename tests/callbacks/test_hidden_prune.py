"""Hidden-node / filter pruning: layers and their consumers physically shrink (BatchNorm and residual
connections included), the smaller net still trains, activation importance removes dead units, and
a shrunk checkpoint reloads in recipes.evaluate and on resume."""

from __future__ import annotations

import json
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from torch import nn

from callbacks.hidden_prune import HiddenNodePruning
from modules.classifier import ClassifierModule
from modules.nets.mlp import MLP
from modules.nets.resnet import ResNet18
from recipes.data.digits import DigitsDataModule
from tests.helpers.build import quiet_trainer
from tests.helpers.runs import run_module, train_ok

FAST = ("callbacks.model_summary=null", "callbacks.lr_monitor=null", "logger=csv")
SCHEDULE = (
    "recipe=hidden_prune",
    "trainer.max_epochs=5",
    "compress.hidden_prune.start_epoch=1",
    "compress.hidden_prune.steps=2",
)


def fit(net: nn.Module, step: HiddenNodePruning, epochs: int) -> pl.Trainer:
    module = ClassifierModule(net, optimizer=lambda p: torch.optim.Adam(p, lr=0.01))
    trainer = quiet_trainer(
        max_epochs=epochs,
        callbacks=[step],
    )
    trainer.fit(module, datamodule=DigitsDataModule(batch_size=128))
    return trainer


def test_mlp_with_batch_norm_shrinks_and_still_trains() -> None:
    pl.seed_everything(0)
    net = MLP((1, 8, 8), 10, hidden=[40, 20], batch_norm=True, dropout=0.1)
    trainer = fit(net, HiddenNodePruning(amount=0.5, start_epoch=1, steps=2), epochs=4)
    linear = [m for m in net.modules() if isinstance(m, nn.Linear)]
    norms = [m for m in net.modules() if isinstance(m, nn.BatchNorm1d)]
    assert [tuple(m.weight.shape) for m in linear] == [(20, 64), (10, 20), (10, 10)]
    assert [m.num_features for m in norms] == [20, 10] and norms[0].running_mean.shape == (20,)
    assert [m.out_features for m in linear] == [20, 10, 10]
    opt_params = {id(p) for group in trainer.optimizers[0].param_groups for p in group["params"]}
    assert opt_params == {id(p) for p in net.parameters()}  # the optimizer was rebuilt on the new layers
    assert trainer.callback_metrics["val/acc"] > 0.6  # the shrunk net kept training


def test_resnet_residual_channels_shrink_together() -> None:
    torch.manual_seed(0)
    net = ResNet18((3, 16, 16), 10)
    step = HiddenNodePruning(amount=0.5)
    step.restructure(net)
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    assert convs[0].out_channels == 32  # 64 -> 32, and every block of the residual stream with it
    assert net(torch.randn(2, 3, 16, 16)).shape == (2, 10)
    assert sum(p.numel() for p in net.parameters()) < 0.3 * sum(
        p.numel() for p in ResNet18((3, 16, 16), 10).parameters()
    )


def test_activation_importance_removes_dead_units() -> None:
    """Units whose weights are zeroed never activate: activation importance removes exactly them."""
    pl.seed_everything(0)
    net = MLP((1, 8, 8), 10, hidden=[16])
    with torch.no_grad():
        net[1].weight[:8] = 0
        net[1].bias[:8] = -1  # ReLU output 0 for units 0-7
        live = net[1].weight[8:].clone()
    fit(net, HiddenNodePruning(amount=0.5, start_epoch=0, importance="activation"), epochs=1)
    assert net[1].out_features == 8
    # the kept units are the live ones (trained for an epoch, so compare their direction)
    cosine = nn.functional.cosine_similarity(net[1].weight, live, dim=1)
    assert (cosine > 0.5).all()


@pytest.mark.slow  # long: runs in CI's slow pass (python -m pytest -m slow)
def test_recipe_shrinks_exports_evaluates_and_resumes(tmp_path: Path) -> None:
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    results = train_ok(straight, *SCHEDULE, *FAST, "export=onnx")
    comp = results["compression"]
    assert comp["params"] <= 0.55 * comp["dense_params"] and comp["compressed_bytes"] < 0.55 * comp["dense_bytes"]
    assert results["metrics"]["test/acc"] > 0.8 and results["export"]["top1_agreement"] == 1.0
    ckpt = torch.load(straight / "checkpoints" / "last.ckpt", weights_only=True)
    assert tuple(ckpt["state_dict"]["net.1.weight"].shape) == (150, 64)
    assert tuple(ckpt["state_dict"]["net.3.weight"].shape) == (50, 150)
    out = tmp_path / "eval.json"
    proc = run_module("recipes.evaluate", f"ckpt_path={straight / 'checkpoints' / 'last.ckpt'}", f"out={out}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(out.read_text())["metrics"]["test/acc"] == results["metrics"]["test/acc"]
    # interrupted between the two rounds (after epoch 1), resumed: the same shapes and weights
    train_ok(resumed, *SCHEDULE, *FAST, "trainer.max_steps=40")
    assert (
        torch.load(resumed / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]["net.1.weight"].shape[0]
        == 225
    )
    train_ok(resumed, *SCHEDULE, *FAST, "ckpt_path=last")
    wb = torch.load(resumed / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    for key, value in ckpt["state_dict"].items():
        assert torch.allclose(value, wb[key], atol=1e-6), key


@pytest.mark.slow  # long: runs in CI's slow pass (python -m pytest -m slow)
def test_ddp_replicas_shrink_alike_and_stay_in_sync(tmp_path: Path) -> None:
    """Under DDP the shrunk module is wrapped again: both ranks end with the same shapes and weights."""
    probe = (
        "+callbacks.probe._target_=tests.helpers.replica_probe.ReplicaProbe",
        f"+callbacks.probe.out_dir={tmp_path / 'probe'}",
        "+callbacks.probe.last_only=true",
    )
    results = train_ok(
        tmp_path / "run",
        *SCHEDULE,
        *FAST,
        "trainer=ddp_sim",
        "compress.hidden_prune.steps=1",
        "trainer.max_epochs=3",
        "model.hidden=[64,32]",
        *probe,
    )
    r0, r1 = (torch.load(tmp_path / "probe" / f"rank{r}.pt") for r in (0, 1))
    assert r0["params"].shape == r1["params"].shape and torch.allclose(r0["params"], r1["params"], atol=1e-6)
    shapes = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    assert tuple(shapes["net.1.weight"].shape) == (32, 64) and results["parallel"]["world_size"] == 2
    assert results["metrics"]["test/acc"] > 0.2  # above chance (0.1) after 3 short epochs
