"""compress=circulant: the projection picks the hidden layers, the recipe end to end in-process
(fewer weights, the edit in the checkpoint, export parity, evaluate replays it), resume across the
projection epoch, and the plan and block refusals at start-up."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from callbacks.circulant import BlockCirculantProjection
from modules.nets.block_circulant import BlockCirculantConv2d, BlockCirculantLinear
from modules.nets.convnet import ConvNet
from modules.nets.mlp import MLP
from tests.helpers.runs import assert_clean_failure, run_module_in_process, train_in_process, train_ok_in_process

FAST = ("callbacks.model_summary=null", "callbacks.lr_monitor=null", "logger=csv")
SCHEDULE = ("recipe=circulant", "trainer.max_epochs=4", "compress.circulant.epoch=2")


def test_the_hidden_layers_are_projected_and_the_ends_stay_dense() -> None:
    torch.manual_seed(0)
    net = MLP((1, 8, 8), 10, hidden=[512, 512, 512])
    x = torch.randn(4, 1, 8, 8)
    assert BlockCirculantProjection(block=16).project(net) == {"3": 16, "5": 16}
    assert isinstance(net[1], nn.Linear) and isinstance(net[7], nn.Linear)  # first layer and head
    assert all(isinstance(net[i], BlockCirculantLinear) for i in (3, 5))
    assert net[3].weight.numel() == 512 * 512 // 16
    assert net.structure_edits == [{"kind": "circulant", "step": "circulant", "blocks": {"3": 16, "5": 16}}]
    assert net(x).shape == (4, 10)
    both = MLP((1, 8, 8), 10, hidden=[512, 512])
    BlockCirculantProjection(block=8, include_first=True, include_head=True).project(both)
    assert [type(both[i]) for i in (1, 3, 5)] == [BlockCirculantLinear] * 3


def test_a_convnet_projects_its_inner_convolutions() -> None:
    net = ConvNet((3, 16, 16), 10, channels=[16, 32, 64])
    blocks = BlockCirculantProjection(block=8).project(net)
    assert set(blocks) == {"1.0.0", "2.0.0"}  # the first conv and the Linear head stay dense
    assert isinstance(net.get_submodule("1.0.0"), BlockCirculantConv2d)
    assert net(torch.randn(2, 3, 16, 16)).shape == (2, 10)


def test_the_recipe_trains_exports_and_evaluates_the_circulant_net(run_dir: Path, tmp_path: Path) -> None:
    results = train_ok_in_process(run_dir, *SCHEDULE, *FAST, "export=onnx")
    comp = results["compression"]
    assert comp["steps"] == ["circulant"] and comp["circulant_blocks"] == {"3": 16}
    dense = 64 * 512 + 512 + 512 * 512 + 512 + 512 * 10 + 10
    assert comp["dense_params"] == dense and comp["params"] == dense - 512 * 512 + 512 * 512 // 16
    assert comp["compressed_bytes"] < comp["dense_bytes"] / 4  # the vectors, not the expanded matrix
    assert results["metrics"]["test/acc"] > 0.8
    assert results["export"]["parity_max_abs_diff"] <= 1e-4 and results["export"]["top1_agreement"] == 1.0
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["recipe"]["structure"] == [{"kind": "circulant", "step": "circulant", "blocks": {"3": 16}}]
    assert tuple(ckpt["state_dict"]["net.3.weight"].shape) == (32, 32, 16)
    out = tmp_path / "eval.json"
    proc = run_module_in_process("recipes.evaluate", f"ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}", f"out={out}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(out.read_text())["metrics"]["test/acc"] == results["metrics"]["test/acc"]


def test_resume_across_the_projection_epoch(tmp_path: Path) -> None:
    """Stopped after the projection, resumed with ckpt_path=last: the same vectors as a straight run."""
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    train_ok_in_process(straight, *SCHEDULE, *FAST)
    train_ok_in_process(resumed, *SCHEDULE, *FAST, "trainer.max_steps=60")  # 20 steps an epoch: stops after 3
    mid = torch.load(resumed / "checkpoints" / "last.ckpt", weights_only=True)
    assert mid["epoch"] == 2 and mid["state_dict"]["net.3.weight"].dim() == 3
    train_ok_in_process(resumed, *SCHEDULE, *FAST, "ckpt_path=last")
    wa = torch.load(straight / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    wb = torch.load(resumed / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    assert set(wa) == set(wb)
    for key in wa:
        torch.testing.assert_close(wa[key], wb[key], atol=1e-6, rtol=0, msg=key)


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (("compress=[prune,circulant]",), "circulant must come before prune"),
        (("compress=[circulant,svd]",), "both replace the same dense matrices"),
        (("compress=[kmeans,circulant]",), "circulant must come before kmeans"),
        (("compress=[binary,circulant]",), "circulant must come before binary"),
        (("compress.circulant.block=1",), "compress.circulant.block=1 must be >= 2"),
        (("compress.circulant.block=1024",), "compress.circulant.block=1024 does not fit a 512 -> 512 layer"),
        (("model.hidden=[512]",), "no Linear / Conv2d layer to project besides its first layer and its head"),
        (("compress.circulant.epoch=4",), "compress.circulant.epoch=4 must be < trainer.max_epochs=4"),
    ],
)
def test_a_bad_plan_or_block_is_refused_at_start_up(run_dir: Path, overrides: tuple[str, ...], expected: str) -> None:
    assert_clean_failure(train_in_process(run_dir, *SCHEDULE, *FAST, *overrides), run_dir, expected)


def test_prune_after_circulant_zeroes_entries_of_the_vectors(run_dir: Path) -> None:
    """compress=[circulant,prune]: the vectors are prune targets (an entry is a circulant diagonal of its
    block), the spectrum follows the masked weights, and the sparsity shows in the final vectors."""
    results = train_ok_in_process(
        run_dir, *SCHEDULE, *FAST, "compress=[circulant,prune]", "trainer.max_epochs=5",
        "compress.prune.start_epoch=3", "compress.prune.end_epoch=4", "compress.prune.sparsity=0.5",
        "compress.prune.scope=layer",  # global magnitudes would take most of the vectors: averaging shrank them
    )  # fmt: skip
    state = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    vectors = state["net.3.weight_orig"] * state["net.3.weight_mask"]  # checkpoints keep the mask
    assert vectors.shape == (32, 32, 16) and (vectors == 0).float().mean() == pytest.approx(0.5, abs=0.01)
    assert results["compression"]["steps"] == ["circulant", "prune"]
    assert results["compression"]["nonzero_params"] < results["compression"]["params"]
    assert results["metrics"]["test/acc"] > 0.5


def test_quantizing_a_circulant_net_is_refused(run_dir: Path) -> None:
    assert_clean_failure(
        train_in_process(
            run_dir, *SCHEDULE, *FAST, "compress=[circulant,qat]", "trainer.max_epochs=6", "compress.qat.start_epoch=3"
        ),
        run_dir,
        "compress=[qat] cannot quantize the block-circulant layers (3)",
    )


@pytest.mark.parametrize(
    ("overrides", "first", "inner"),
    [  # the first layer's weight (dense) and an inner one's vectors [p, q, b, *taps]
        (("model.hidden=[64,64]", "model.circulant_block=16"), ("net.1.weight", 2), ("net.3.weight", 3)),
        (
            ("model=convnet", "model.channels=[16,32]", "model.circulant_block=8"),
            ("net.0.0.0.weight", 4),
            ("net.1.0.0.weight", 5),
        ),
    ],
)
def test_a_net_built_circulant_trains_exports_and_evaluates(
    run_dir: Path, tmp_path: Path, overrides: tuple[str, ...], first: tuple[str, int], inner: tuple[str, int]
) -> None:
    """From scratch (`model.circulant_block`): the inner layers are block-circulant from the start, the
    first layer and the head dense; the ONNX file matches and evaluate rebuilds the same net."""
    results = train_ok_in_process(run_dir, *overrides, *FAST, "trainer.max_epochs=2", "export=onnx")
    assert results["export"]["parity_max_abs_diff"] <= 1e-4 and results["metrics"]["test/acc"] > 0.3
    state = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    assert state[first[0]].dim() == first[1] and state[inner[0]].dim() == inner[1]
    out = tmp_path / "eval.json"
    proc = run_module_in_process("recipes.evaluate", f"ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}", f"out={out}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(out.read_text())["metrics"]["test/acc"] == results["metrics"]["test/acc"]


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (("model.circulant_block=1",), "model.circulant_block=1 does not fit a 300 -> 100 layer"),
        (("model=convnet", "model.circulant_block=-2"), "model.circulant_block=-2 must be 0 (dense) or a block"),
        (("model=convnet", "model.circulant_block=512"), "model.circulant_block=512 does not fit a 32 -> 64 layer"),
    ],
)
def test_a_bad_circulant_net_is_refused_at_start_up(run_dir: Path, overrides: tuple[str, ...], expected: str) -> None:
    assert_clean_failure(train_in_process(run_dir, *overrides, *FAST), run_dir, expected)
