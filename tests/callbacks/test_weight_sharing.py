"""k-means weight sharing: linear initialization, each centroid's gradient the sum of its members',
2^bits values per layer kept through fine-tuning, pruned zeros kept, start-up refusals, and resume
across each precision step's start epoch."""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from hydra.core.hydra_config import HydraConfig

from callbacks.prune import MagnitudePruning
from callbacks.weight_sharing import SharedWeight, WeightSharing, cluster, linear_centroids
from modules.classifier import ClassifierModule
from modules.nets.mlp import MLP
from recipes.assembly.training import build_training
from recipes.data.digits import DigitsDataModule
from recipes.errors import RecipeError
from tests.helpers.build import compose_train, quiet_trainer
from tests.helpers.runs import train_ok


def test_linear_initialization_and_clustering() -> None:
    values = torch.tensor([-1.0, -0.9, 0.1, 0.2, 2.0])
    assert linear_centroids(values, 4).tolist() == pytest.approx([-1.0, 0.0, 1.0, 2.0])
    centroids, index = cluster(values, 2)  # from [-1, 2]: the four small values, then 2.0 alone
    assert centroids.tolist() == pytest.approx([-0.4, 2.0]) and index.tolist() == [0, 0, 0, 0, 1]


def test_centroid_gradient_is_the_sum_of_its_members_gradients() -> None:
    weight = torch.tensor([[0.5, -0.4, 0.0], [0.45, 0.0, -0.5]])
    shared = SharedWeight("kmeans", weight.shape, bits=1)
    shared.activate(weight, weight)
    out = shared(weight)
    assert sorted(out.unique().tolist()) == pytest.approx([-0.45, 0.0, 0.475])
    grad = torch.tensor([[1.0, 2.0, 4.0], [8.0, 16.0, 32.0]])
    out.backward(grad)
    members = {int(shared.index[0, 0]): 1.0 + 8.0, int(shared.index[0, 1]): 2.0 + 32.0}  # zeros get none
    assert shared.centroids.grad.tolist() == [members[0], members[1]]


def _fit(callbacks: list, epochs: int) -> MLP:
    pl.seed_everything(0)
    net = MLP(input_shape=(1, 8, 8), num_classes=10, hidden=[32, 16])
    module = ClassifierModule(net, optimizer=lambda p: torch.optim.AdamW(p, lr=0.01))
    trainer = quiet_trainer(
        max_epochs=epochs,
        limit_train_batches=5,
        limit_val_batches=1,
        callbacks=callbacks,
    )
    trainer.fit(module, datamodule=DigitsDataModule())
    return net


def test_fine_tuned_sharing_after_pruning_keeps_2_to_the_bits_values_and_the_zeros() -> None:
    pruning, sharing = MagnitudePruning(0.7, 0, 1, "layer", every_n_steps=2), WeightSharing(bits=2, start_epoch=2)
    net = _fit([pruning, sharing], epochs=4)
    before = sharing.before  # the pruned net just before clustering
    for name in ("1", "3", "5"):
        weight, pruned = net.get_submodule(name).weight, before.get_submodule(name).weight
        nonzero = weight[weight != 0].unique()
        assert len(nonzero) == 4  # exactly 2^bits shared values
        assert torch.equal(weight == 0, pruned == 0)  # zeros stayed zero, nothing else became zero
        clustered, _ = cluster(pruned[pruned != 0], 4)
        assert not torch.allclose(nonzero.double(), clustered.sort().values, atol=1e-6)  # centroids were fine-tuned


BAD = [
    (["compress=[kmeans]", "compress.kmeans.bits=9"], "compress.kmeans.bits=9 must be an integer in [1, 8]"),
    (["compress=[kmeans]", "compress.kmeans.bits=0"], "compress.kmeans.bits=0 must be an integer in [1, 8]"),
    (
        ["compress=[kmeans,prune]", "compress.kmeans.start_epoch=16"],
        "compress=[kmeans,prune]: prune must come before kmeans (prune the weights that ship, then change how they "
        "are stored); use compress=[prune,kmeans]",
    ),
    (
        ["compress=[prune,kmeans]", "compress.kmeans.start_epoch=10"],
        "prune changes the net until epoch 15 but kmeans starts at epoch 10",
    ),
    (
        ["compress=[kmeans]", "compress.kmeans.start_epoch=20"],
        "compress.kmeans.start_epoch=20 must be < trainer.max_epochs=20",
    ),
]


@pytest.mark.parametrize(("overrides", "message"), BAD, ids=[" ".join(o) for o, _ in BAD])
def test_bad_weight_sharing_plan_is_refused(overrides: list[str], message: str, tmp_path: Path) -> None:
    with pytest.raises(RecipeError) as err:
        build_training(compose_train(tmp_path, *overrides), dict(HydraConfig.get().runtime.choices))
    assert message in str(err.value)


FAST = ("callbacks.model_summary=null", "callbacks.lr_monitor=null", "logger=csv", "trainer.max_epochs=4")
RESUMED = [
    ("binary", ("compress=[binary]", "compress.binary.start_epoch=2")),
    ("ternary", ("compress=[ternary]", "compress.ternary.start_epoch=2")),
    (
        "kmeans",
        (
            "compress=[prune,kmeans]",
            "compress.prune.start_epoch=0",
            "compress.prune.end_epoch=1",
            "compress.kmeans.start_epoch=2",
        ),
    ),
    (  # per-layer rates, and dead units' biases re-zeroed after every step from end_epoch on
        "deep_compression",
        (
            "recipe=deep_compression",
            "compress.prune.start_epoch=0",
            "compress.prune.end_epoch=1",
            "compress.kmeans.start_epoch=2",
        ),
    ),
]


@pytest.mark.slow  # long: runs in CI's slow pass (python -m pytest -m slow)
@pytest.mark.parametrize(("name", "plan"), RESUMED, ids=[n for n, _ in RESUMED])
@pytest.mark.parametrize("stop_step", [20, 60], ids=["before_start", "after_start"])
def test_resume_across_the_start_epoch_gives_identical_weights(
    name: str, plan: tuple[str, ...], stop_step: int, tmp_path: Path
) -> None:
    """Stopped before or after the step's start epoch (20 batches an epoch) and resumed with
    ckpt_path=last: the same checkpoint keys in every phase, and the same final weights as straight."""
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    train_ok(straight, *plan, *FAST)
    train_ok(resumed, *plan, *FAST, f"trainer.max_steps={stop_step}")
    train_ok(resumed, *plan, *FAST, "ckpt_path=last")
    wa = torch.load(straight / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    wb = torch.load(resumed / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    assert set(wa) == set(wb) and any(".parametrizations.weight" in k for k in wa)
    for key in wa:
        assert torch.equal(wa[key], wb[key]), key
