"""Magnitude pruning: the cubic schedule, sparsity reached at each scheduled step, masks that
survive checkpoint and resume, permanent zeros in the exported model, and start-up validation."""

from __future__ import annotations

import re
from pathlib import Path

import lightning.pytorch as pl
import onnx
import pytest
import torch
from onnx import numpy_helper
from torch.nn.utils import prune

from callbacks.prune import MagnitudePruning, cubic_sparsity, prunable, weight_sparsity
from modules.classifier import ClassifierModule
from modules.nets.mlp import MLP
from recipes.data.digits import DigitsDataModule
from tests.helpers.build import quiet_trainer
from tests.helpers.runs import train_in_process, train_ok_in_process


def test_cubic_schedule() -> None:
    assert cubic_sparsity(0, 0.9, 2, 6) == 0.0
    assert cubic_sparsity(2, 0.9, 2, 6) == 0.0
    assert cubic_sparsity(4, 0.9, 2, 6) == pytest.approx(0.9 * (1 - 0.5**3))
    assert cubic_sparsity(6, 0.9, 2, 6) == cubic_sparsity(9, 0.9, 2, 6) == 0.9
    ramp = [cubic_sparsity(e / 4, 0.9, 2, 6) for e in range(8, 25)]
    assert ramp == sorted(ramp)  # monotonic, fastest early


def fit_pruned(module: ClassifierModule, pruning: MagnitudePruning) -> None:
    """Four epochs on digits with `pruning`, nothing else."""
    trainer = quiet_trainer(
        max_epochs=4,
        callbacks=[pruning],
    )
    trainer.fit(module, datamodule=DigitsDataModule())


@pytest.mark.parametrize("scope", ["global", "layer"])
def test_sparsity_is_reached_and_held(scope: str) -> None:
    """Each scheduled step raises sparsity; the final one is the target, held through fine-tuning."""
    pl.seed_everything(0)
    net = MLP(input_shape=(1, 8, 8), num_classes=10, hidden=[32])
    module = ClassifierModule(net, optimizer=lambda p: torch.optim.SGD(p, lr=0.05))
    pruning = MagnitudePruning(sparsity=0.8, start_epoch=0, end_epoch=2, scope=scope, every_n_steps=5)
    fit_pruned(module, pruning)
    assert len(pruning.history) >= 4 and pruning.history == sorted(pruning.history)
    assert pruning.history[-1] == pytest.approx(0.8, abs=2e-3)
    assert weight_sparsity(net) == pytest.approx(0.8, abs=2e-3)  # held: fine-tuning kept the zeros
    assert not any(prune.is_pruned(m) for m, _ in prunable(net))  # made permanent at the end of fit
    if scope == "layer":
        for module_, _ in prunable(net):
            assert float((module_.weight == 0).float().mean()) == pytest.approx(0.8, abs=0.02)


@pytest.mark.parametrize("drop_dead_units", [False, True])
def test_each_layer_reaches_its_own_sparsity(drop_dead_units: bool) -> None:
    """scope=layer with layer_sparsity: every layer lands on its own rate, to the weight (the unnamed
    head on `sparsity`); with drop_dead_units, each unit the next layer no longer reads also has a
    zero incoming row and bias at the end, although AdamW's momentum moves such a bias between steps."""
    pl.seed_everything(0)
    net = MLP(input_shape=(1, 8, 8), num_classes=10, hidden=[64, 32])
    module = ClassifierModule(net, optimizer=lambda p: torch.optim.AdamW(p, lr=0.01))
    rates = {"1": 0.9, "3": 0.97, "5": 0.6}
    pruning = MagnitudePruning(
        sparsity=rates["5"],
        start_epoch=0,
        end_epoch=2,
        scope="layer",
        every_n_steps=5,
        layer_sparsity={"1": rates["1"], "3": rates["3"]},
        drop_dead_units=drop_dead_units,
    )
    fit_pruned(module, pruning)
    layers = dict(net.named_modules())
    for name, rate in rates.items():
        zeros, target = int((layers[name].weight == 0).sum()), round(rate * layers[name].weight.numel())
        assert zeros >= target if drop_dead_units else zeros == target, name
    dead = {"1": (net[3].weight == 0).all(0), "3": (net[5].weight == 0).all(0)}
    assert int(dead["1"].sum()) > 0  # 97% of 64 x 32 pruned: some units of layer 1 are read by no one
    for name, units in dead.items():
        shipped = torch.cat([layers[name].weight[units].ravel(), layers[name].bias[units]])
        assert shipped.any() != drop_dead_units or not units.any()


FAST = ("callbacks.model_summary=null", "callbacks.lr_monitor=null", "logger=csv")
SCHEDULE = ("recipe=prune", "trainer.max_epochs=6", "compress.prune.start_epoch=1", "compress.prune.end_epoch=4")


@pytest.mark.slow  # long: runs in CI's slow pass (python -m pytest -m slow)
def test_masks_survive_resume(tmp_path: Path) -> None:
    """Interrupted mid-ramp, resumed with ckpt_path=last: the same final weights and zeros as straight."""
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    a = train_ok_in_process(straight, *SCHEDULE, *FAST)
    train_ok_in_process(resumed, *SCHEDULE, *FAST, "trainer.max_steps=60")  # 20 batches/epoch: stops after epoch 3
    mid = torch.load(resumed / "checkpoints" / "last.ckpt", weights_only=True)
    masks = [k for k in mid["state_dict"] if k.endswith("weight_mask")]
    assert len(masks) == 3 and mid["epoch"] == 2
    assert 0 < float(1 - mid["state_dict"][masks[0]].mean()) < 0.9  # mid-ramp
    b = train_ok_in_process(resumed, *SCHEDULE, *FAST, "ckpt_path=last")
    wa = torch.load(straight / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    wb = torch.load(resumed / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    assert set(wa) == set(wb)
    for key in wa:
        assert torch.equal(wa[key], wb[key]), key
    # the resumed run did not see the net before pruning began, so it cannot test it
    unseen = ("acc_before", "per_step")
    assert {k: v for k, v in a["compression"].items() if k not in unseen} == {
        k: v for k, v in b["compression"].items() if k not in unseen
    }


def test_prune_recipe_exports_ninety_percent_zeros(run_dir: Path) -> None:
    results = train_ok_in_process(run_dir, *SCHEDULE, *FAST, "compress.prune.sparsity=0.9", "export=onnx")
    comp = results["compression"]
    assert comp["steps"] == ["prune"] and comp["ratio"] > 5
    assert comp["compressed_bytes"] < comp["dense_bytes"] / 5
    weights = [
        numpy_helper.to_array(t)
        for t in onnx.load(run_dir / results["export"]["onnx"]).graph.initializer
        if len(t.dims) == 2
    ]
    zeros = sum(int((w == 0).sum()) for w in weights) / sum(w.size for w in weights)
    assert zeros == pytest.approx(0.9, abs=2e-3)
    assert results["export"]["top1_agreement"] == 1.0
    assert 0 <= comp["acc_after"] == results["metrics"]["test/acc"] <= 1
    report = (run_dir / "report.md").read_text()
    assert (
        re.search(r"\| net.1 \| Linear \| 19,500 \| 19,500 \| [\d,]+ \| \d+\.\d% \|", report)
        and (run_dir / "compression.png").stat().st_size > 1000
    )


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("compress.prune.sparsity=1.0", "compress.prune.sparsity=1.0"),
        ("compress.prune.end_epoch=6", "trainer.max_epochs=6"),
        (
            "compress.prune.scope=layer compress.prune.layer_sparsity={fc1:0.9}",
            "compress.prune.layer_sparsity names 'fc1', not a Linear / Conv2d of this net: use its module names (1, 3, 5)",
        ),
        ("compress.prune.layer_sparsity={1:0.9}", "compress.prune.layer_sparsity needs compress.prune.scope=layer"),
        ("compress.prune.scope=layer compress.prune.layer_sparsity={1:1.5}", "compress.prune.layer_sparsity.1=1.5"),
    ],
)
def test_bad_pruning_settings_fail_at_start_up(override: str, message: str, run_dir: Path) -> None:
    proc = train_in_process(run_dir, *SCHEDULE, *override.split())
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert message in proc.stderr.strip().splitlines()[-1]
    assert not run_dir.exists()
