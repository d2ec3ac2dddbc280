"""compress=block_prune: which blocks are removable in each net, the step end to end in-process (blocks
deleted, the edit in the checkpoint, evaluate replays it, the export is smaller), and its refusals."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from callbacks.block_prune import BlockPruning, removable_blocks
from modules.nets.convnet import ConvNet
from modules.nets.mlp import MLP
from modules.nets.resnet import ResNet18
from modules.nets.transformer import CausalTransformer
from tests.helpers.runs import assert_clean_failure, run_module_in_process, train_in_process, train_ok_in_process

FAST = ("callbacks.model_summary=null", "callbacks.lr_monitor=null", "logger=csv")
DEEP = ("compress=[block_prune]", "model.hidden=[64,64,64,64]", "trainer.max_epochs=4", "compress.block_prune.epoch=2")


def test_the_removable_blocks_of_each_net() -> None:
    units, kept = removable_blocks(ResNet18((3, 8, 8), 10))
    assert sorted(units) == ["1.0", "1.1", "2.1", "3.1", "4.1"]  # layer2-4's first blocks downsample
    assert {"2.0", "3.0", "4.0"} <= set(kept) and "downsamples" in kept["2.0"]
    assert list(removable_blocks(CausalTransformer((16,), 11, 16, 3, 4))[0]) == ["block0", "block1", "block2"]
    convnet = removable_blocks(ConvNet((3, 16, 16), 10, channels=[16, 32], convs_per_stage=2))[0]
    assert sorted(convnet) == ["0.1", "1.1"]
    units, kept = removable_blocks(MLP((1, 8, 8), 10, hidden=[32, 32, 32], batch_norm=True, dropout=0.1))
    assert units == {"5": ["5", "6", "7", "8"], "9": ["9", "10", "11", "12"]} and list(kept) == ["1"]


def test_removing_a_block_shortens_the_net_and_keeps_the_rest() -> None:
    torch.manual_seed(0)
    net = ResNet18((3, 8, 8), 10)
    before = sum(p.numel() for p in net.parameters())
    BlockPruning(amount=0.4).remove(net, ["1.1", "3.1"])
    assert "1.1" not in dict(net.named_modules()) and "3.1" not in dict(net.named_modules())
    assert net(torch.randn(2, 3, 8, 8)).shape == (2, 10)
    assert sum(p.numel() for p in net.parameters()) < before
    assert net.structure_edits[-1]["modules"] == ["1.1", "3.1"]


def test_the_step_removes_the_least_important_blocks_end_to_end(run_dir: Path, tmp_path: Path) -> None:
    results = train_ok_in_process(run_dir, *DEEP, *FAST, "export=onnx")
    comp = results["compression"]
    scores = comp["block_prune_loss_increase"]
    assert sorted(scores) == ["1", "3", "5", "7"] and "block_prune_kept" not in comp  # digits: 64 -> 64 first
    flops = comp["block_prune_flops"]
    assert flops["after"] == flops["before"] - 2 * 64 * 64  # one 64 x 64 matmul fewer per sample
    least = min(scores, key=scores.get)
    assert comp["block_prune_removed"] == [least, str(int(least) + 1)]  # the Linear and its ReLU
    assert comp["params"] == comp["dense_params"] - (64 * 64 + 64)
    assert results["export"]["parity_max_abs_diff"] <= 1e-4
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["recipe"]["structure"] == [
        {"kind": "remove", "step": "block_prune", "modules": comp["block_prune_removed"]}
    ]
    assert not any(key.startswith(f"net.{least}.") for key in ckpt["state_dict"])
    out = tmp_path / "eval.json"
    proc = run_module_in_process("recipes.evaluate", f"ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}", f"out={out}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(out.read_text())["metrics"]["test/acc"] == results["metrics"]["test/acc"]


def test_resume_across_the_removal_epoch(tmp_path: Path) -> None:
    """Stopped after the removal, resumed with ckpt_path=last: the same net and weights as a straight run."""
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    first = train_ok_in_process(straight, *DEEP, *FAST)
    train_ok_in_process(resumed, *DEEP, *FAST, "trainer.max_steps=60")  # 20 steps an epoch: stops after 3
    mid = torch.load(resumed / "checkpoints" / "last.ckpt", weights_only=True)
    assert mid["epoch"] == 2 and mid["recipe"]["structure"][0]["kind"] == "remove"
    train_ok_in_process(resumed, *DEEP, *FAST, "ckpt_path=last")
    wa = torch.load(straight / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    wb = torch.load(resumed / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    removed = first["compression"]["block_prune_removed"]
    assert set(wa) == set(wb) and not any(key.startswith(f"net.{removed[0]}.") for key in wa)
    for key in wa:
        torch.testing.assert_close(wa[key], wb[key], atol=1e-6, rtol=0, msg=key)
    assert removed == mid["recipe"]["structure"][0]["modules"]


def test_a_transformer_language_model_loses_a_block(run_dir: Path) -> None:
    results = train_ok_in_process(
        run_dir,
        "recipe=lm",
        "model=transformer",
        "model.layers=3",
        "model.width=32",
        "model.heads=2",
        "data.seq_len=32",
        "compress=[block_prune]",
        "compress.block_prune.epoch=1",
        "compress.block_prune.batches=2",
        "trainer.max_epochs=2",
        "+trainer.limit_train_batches=4",
        "+trainer.limit_val_batches=2",
        "+trainer.limit_test_batches=2",
        "export=none",
        *FAST,
    )
    comp = results["compression"]
    assert sorted(comp["block_prune_loss_increase"]) == ["block0", "block1", "block2"]
    assert len(comp["block_prune_removed"]) == 1 and comp["params"] < comp["dense_params"]
    assert comp["block_prune_flops"]["after"] < comp["block_prune_flops"]["before"]
    assert results["metrics"]["test/bpc"] > 0


def test_a_circulant_convnet_has_removable_conv_blocks() -> None:
    net = ConvNet((3, 16, 16), 10, channels=[16, 32], convs_per_stage=2, circulant_block=8)
    assert sorted(removable_blocks(net)[0]) == ["0.1", "1.1"]
    BlockPruning().remove(net, ["1.1"])
    assert net(torch.randn(2, 3, 16, 16)).shape == (2, 10)


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (("model.hidden=[300,100]",), "MLP has no removable block"),
        (("compress.block_prune.amount=0.9",), "compress.block_prune.amount=0.9 removes all 4 removable blocks"),
        (("compress.block_prune.amount=0",), "compress.block_prune.amount=0 must be in (0, 1)"),
        (("compress.block_prune.epoch=4",), "compress.block_prune.epoch=4 must be < trainer.max_epochs=4"),
    ],
)
def test_a_bad_block_pruning_plan_is_refused_at_start_up(run_dir: Path, overrides: tuple[str, ...], expected: str):
    assert_clean_failure(train_in_process(run_dir, *DEEP, *FAST, *overrides), run_dir, expected)
