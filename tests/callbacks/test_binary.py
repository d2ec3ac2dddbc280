"""Binary and ternary weights: the straight-through gradients, the values the forward pass uses, TWN's
and TTQ's formulas, a trained net that ships those values, and start-up refusals."""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from hydra.core.hydra_config import HydraConfig

from callbacks.binary import BinaryWeight, BinaryWeights, SignSTE
from callbacks.ternary import TernaryWeight, TernaryWeights, TTQFunction, twn_scale, twn_threshold
from modules.classifier import ClassifierModule
from modules.nets.mlp import MLP
from recipes.assembly.training import build_training
from recipes.data.digits import DigitsDataModule
from recipes.errors import RecipeError
from tests.helpers.build import compose_train, quiet_trainer


def test_ste_gradient_is_the_clipped_identity() -> None:
    latent = torch.tensor([-2.0, -1.0, -0.3, 0.0, 0.4, 1.0, 1.5], requires_grad=True)
    out = SignSTE.apply(latent)
    assert out.tolist() == [-1, -1, -1, 1, 1, 1, 1]  # sign, with 0 counted as +1
    upstream = torch.arange(1.0, 8.0)
    out.backward(upstream)
    assert latent.grad.tolist() == [0, 2, 3, 4, 5, 6, 0]  # passed where |w| <= 1, zero outside


def test_binary_forward_uses_plus_minus_alpha_per_channel() -> None:
    latent = torch.randn(5, 7, generator=torch.Generator().manual_seed(0))
    weight = BinaryWeight("binary", latent.shape, "channel")
    weight.activate(latent, latent)
    out = weight(latent)
    alpha = latent.abs().mean(1, keepdim=True)
    assert torch.equal(out.abs(), alpha.expand_as(out))  # exactly +-alpha of its own row
    assert torch.equal(out > 0, latent >= 0)
    assert set(BinaryWeight("binary", latent.shape, "none").compute(latent).unique().tolist()) == {-1.0, 1.0}


def test_twn_threshold_and_scale_match_their_formulas() -> None:
    latent = torch.tensor([[0.9, -0.1, 0.2, -0.8], [0.05, 0.6, -0.5, 0.0]])
    delta = twn_threshold(latent)
    assert float(delta) == pytest.approx(0.7 * 3.15 / 8)  # 0.7 * mean |W|
    kept = [0.9, 0.8, 0.6, 0.5]  # |w| > delta = 0.2756
    assert float(twn_scale(latent, delta)) == pytest.approx(sum(kept) / 4)
    weight = TernaryWeight("ternary", latent.shape, "twn", 0.05)
    weight.activate(latent, latent)
    alpha = sum(kept) / 4
    expected = torch.tensor([[alpha, 0, 0, -alpha], [0, alpha, -alpha, 0]])
    assert torch.allclose(weight(latent), expected)


def test_ttq_gradients_follow_the_paper() -> None:
    latent = torch.tensor([0.9, -0.8, 0.01, 0.5], requires_grad=True)
    w_p, w_n = torch.tensor(2.0, requires_grad=True), torch.tensor(3.0, requires_grad=True)
    out = TTQFunction.apply(latent, w_p, w_n, torch.tensor(0.045))
    assert out.tolist() == [2.0, -3.0, 0.0, 2.0]
    out.backward(torch.tensor([1.0, 10.0, 100.0, 1000.0]))
    assert latent.grad.tolist() == [2.0, 30.0, 100.0, 2000.0]  # scaled by w_p / w_n, 1 in the zero region
    assert float(w_p.grad) == 1001.0 and float(w_n.grad) == -10.0


@pytest.mark.parametrize(
    "step", [BinaryWeights(start_epoch=1), TernaryWeights("ttq", start_epoch=1)], ids=["binary", "ttq"]
)
def test_trained_net_ships_binary_or_ternary_hidden_layers(step) -> None:
    """Full precision before start_epoch, then a hidden layer of {-a, +a} per channel (binary) or
    {-w_n, 0, w_p} (ternary); first and last layers stay fp32; the net ships plain weights."""
    pl.seed_everything(0)
    net = MLP(input_shape=(1, 8, 8), num_classes=10, hidden=[32, 16])
    module = ClassifierModule(net, optimizer=lambda p: torch.optim.AdamW(p, lr=0.01))
    trainer = quiet_trainer(
        max_epochs=3,
        limit_train_batches=5,
        limit_val_batches=1,
        callbacks=[step],
    )
    trainer.fit(module, datamodule=DigitsDataModule())
    assert set(net.state_dict()) == {f"{i}.{p}" for i in (1, 3, 5) for p in ("weight", "bias")}  # plain again
    hidden = net[3].weight
    if isinstance(step, BinaryWeights):
        assert all(len(row.abs().unique()) == 1 for row in hidden)
    else:
        assert len(hidden.unique()) == 3 and 0 in hidden.unique().tolist()
    assert len(net[1].weight.unique()) > 100 and len(net[5].weight.unique()) > 100  # first and last fp32
    assert step.before is not None and len(step.before[3].weight.unique()) > 100  # the net before it started


BAD = [
    (
        ["compress=[binary]", "model.hidden=[32]"],
        "compress.binary.skip_first_last=true keeps all 2 weight layers of this net at full precision",
    ),
    (["compress=[ternary]", "compress.ternary.method=ttt"], "compress.ternary.method='ttt' must be 'twn' or 'ttq'"),
    (["compress=[binary]", "compress.binary.scale=row"], "compress.binary.scale='row' must be"),
    (
        ["compress=[binary]", "compress.binary.start_epoch=20"],
        "compress.binary.start_epoch=20 must be < trainer.max_epochs=20",
    ),
    (
        ["compress=[kmeans,binary]", "compress.kmeans.start_epoch=5"],
        "compress=[kmeans,binary]: binary must come before kmeans (binarize the weights first",
    ),
    (["compress=[kmeans,ternary]", "compress.kmeans.start_epoch=5"], "ternary must come before kmeans"),
    (["compress=[binary,ternary]"], "binary and ternary both set the hidden layers' weights to a few values"),
]


@pytest.mark.parametrize(("overrides", "message"), BAD, ids=[" ".join(o) for o, _ in BAD])
def test_bad_binary_or_ternary_plan_is_refused(overrides: list[str], message: str, tmp_path: Path) -> None:
    with pytest.raises(RecipeError) as err:
        build_training(compose_train(tmp_path, *overrides), dict(HydraConfig.get().runtime.choices))
    assert message in str(err.value)
