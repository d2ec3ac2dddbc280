"""GAN task (issue 9): Algorithm 1's step structure, the loss formulas, the offline Frechet distance,
the moving average of the generator's weights, bad input, and one tiny in-process fit that logs
val/fd, writes the sample grids and the test metrics."""

from __future__ import annotations

import functools
import math

import lightning.pytorch as pl
import pytest
import torch
from torch import nn

from modules.gan import GanModule
from modules.gan_ema import ParameterAverage
from modules.gan_losses import discriminator_loss, generator_loss
from modules.gan_metrics import PenultimateFeatures, class_coverage, frechet_distance
from modules.nets.dcgan import DCGan
from modules.nets.gan_mlp import MLPGan
from modules.nets.mlp import MLP
from recipes.data.digits import DigitsDataModule
from tests.helpers.build import quiet_trainer

ADAM = functools.partial(torch.optim.Adam, lr=2e-4, betas=(0.5, 0.999))


def feature_net() -> nn.Module:
    torch.manual_seed(0)
    return MLP((1, 8, 8), 10, hidden=(32,))


def gan(**task) -> GanModule:
    task.setdefault("latent_dim", 8)
    pair = task.pop("pair", MLPGan)((1, 8, 8), 10, max(1, task["latent_dim"]), task.get("conditional", False))
    return GanModule(pair, ADAM, feature=feature_net(), val_samples=64, fd_samples=64, **task)


def digits() -> DigitsDataModule:
    return DigitsDataModule(batch_size=32, normalize={"mean": [0.5], "std": [0.5]})


def gan_trainer(tmp_path, **kwargs) -> pl.Trainer:
    return quiet_trainer(
        num_sanity_val_steps=0,
        default_root_dir=str(tmp_path),
        **kwargs,
    )


@pytest.mark.parametrize("d_steps", [1, 3])
def test_step_updates_d_k_times_per_g_and_each_optimizer_only_its_net(tmp_path, d_steps):
    module = gan(d_steps=d_steps, d_lr_scale=0.5)
    generator, discriminator = module.net.generator, module.net.discriminator
    steps = {"g": 0, "d": 0}
    untouched: dict[str, list[torch.Tensor]] = {}

    def watch(opt: torch.optim.Optimizer, name: str, other: nn.Module) -> None:
        def before(*_):
            untouched[name] = [p.detach().clone() for p in other.parameters()]

        def after(*_):
            steps[name] += 1
            assert all(torch.equal(a, p) for a, p in zip(untouched[name], other.parameters())), (
                f"the {name} optimizer changed the other net"
            )

        opt.register_step_pre_hook(before)
        opt.register_step_post_hook(after)

    class Watch(pl.Callback):
        def on_train_start(self, trainer, pl_module):
            g_opt, d_opt = trainer.optimizers
            assert {id(p) for p in g_opt.param_groups[0]["params"]} == {id(p) for p in generator.parameters()}
            assert {id(p) for p in d_opt.param_groups[0]["params"]} == {id(p) for p in discriminator.parameters()}
            assert d_opt.param_groups[0]["lr"] == 0.5 * g_opt.param_groups[0]["lr"] == 1e-4  # task.d_lr_scale
            watch(g_opt, "g", discriminator)
            watch(d_opt, "d", generator)

    before_g = [p.detach().clone() for p in generator.parameters()]
    gan_trainer(tmp_path, max_epochs=1, limit_train_batches=6, limit_val_batches=0, callbacks=[Watch()]).fit(
        module, datamodule=digits()
    )
    assert steps == {"d": 6, "g": 6 // d_steps}
    assert not all(torch.equal(a, p) for a, p in zip(before_g, generator.parameters()))


def test_loss_variants_match_their_formulas():
    real, fake = torch.tensor([2.0, -1.0]), torch.tensor([0.5, -3.0])
    sig = torch.sigmoid
    bce_d = -(sig(real).log().mean() + (1 - sig(fake)).log().mean())
    for kind in ("non_saturating", "minimax"):
        assert torch.allclose(discriminator_loss(real, fake, kind), bce_d)
    smoothed = -((0.9 * sig(real).log() + 0.1 * (1 - sig(real)).log()).mean() + (1 - sig(fake)).log().mean())
    assert torch.allclose(discriminator_loss(real, fake, "non_saturating", 0.1), smoothed)
    assert torch.allclose(generator_loss(fake, "non_saturating"), -sig(fake).log().mean())
    assert torch.allclose(generator_loss(fake, "minimax"), (1 - sig(fake)).log().mean())
    hinge_d = torch.relu(1 - real).mean() + torch.relu(1 + fake).mean()
    assert torch.allclose(discriminator_loss(real, fake, "hinge"), hinge_d)
    assert math.isclose(float(hinge_d), (0 + 2) / 2 + (1.5 + 0) / 2)
    assert torch.allclose(generator_loss(fake, "hinge"), -fake.mean())


def test_frechet_distance_is_zero_for_the_same_set_and_grows_with_a_shift():
    data = digits()
    data.setup("fit")
    images = torch.stack([data.test_set[i][0] for i in range(len(data.test_set))])
    metric = frechet_distance(PenultimateFeatures(feature_net()))
    distances = []
    for shift in (0.0, 0.2, 0.5):
        metric.update(images, real=True)
        metric.update(images + shift, real=False)
        distances.append(float(metric.compute()))
        metric.reset()
    assert abs(distances[0]) < 1e-3
    assert 0 < distances[1] < distances[2]


def test_class_coverage_is_normalized_entropy():
    assert float(class_coverage(torch.zeros(100, dtype=torch.long), 10)) == 0.0
    assert math.isclose(float(class_coverage(torch.arange(100) % 10, 10)), 1.0, rel_tol=1e-6)
    assert math.isclose(float(class_coverage(torch.arange(100) % 2, 4)), 0.5, rel_tol=1e-6)


@pytest.mark.parametrize(
    "task, message",
    [
        ({"d_steps": 0}, "task.d_steps=0 "),
        ({"d_lr_scale": 0}, "task.d_lr_scale=0 "),
        ({"latent_dim": 0}, "task.latent_dim=0 "),
        ({"loss": "wasserstein"}, "task.loss=wasserstein "),
        ({"loss": "hinge", "label_smoothing": 0.1}, "task.label_smoothing=0.1 "),
        ({"ema_decay": 1.0}, "task.ema_decay=1.0 "),
    ],
)
def test_bad_task_values_name_the_key(task, message):
    with pytest.raises(ValueError, match=f"^{message}"):
        gan(**task)


def test_conditional_needs_labelled_data():
    with pytest.raises(ValueError, match="^task.conditional=true needs labelled data"):
        MLPGan((1, 8, 8), 1, 8, conditional=True)
    with pytest.raises(ValueError, match="^model.generator_channels=.*not divisible by 8"):
        DCGan((1, 12, 12), 10, 8, generator_channels=(8, 8, 8))


@pytest.mark.parametrize("pair, conditional", [(MLPGan, False), (DCGan, True)])
def test_tiny_fit_logs_val_fd_writes_grids_and_test_metrics(tmp_path, pair, conditional):
    module = gan(pair=pair, conditional=conditional)
    trainer = gan_trainer(tmp_path, max_epochs=2, limit_train_batches=3)
    data = digits()
    trainer.fit(module, datamodule=data)
    assert math.isfinite(float(trainer.callback_metrics["val/fd"]))
    assert sorted(p.name for p in (tmp_path / "samples").iterdir()) == ["epoch0000.png", "epoch0001.png"]
    assert (tmp_path / "samples.png").is_file()
    metrics = gan_trainer(tmp_path).test(module, datamodule=data, verbose=False)[0]
    expected = {"test/fd", "test/fd_real", "test/class_coverage"} | ({"test/cond_acc"} if conditional else set())
    assert set(metrics) == expected
    assert metrics["test/fd"] > metrics["test/fd_real"] >= 0
    z, *labels = module.example_input(4)
    assert module.shipped_net(z, *labels).shape == (4, 1, 8, 8)


def test_parameter_average_is_an_ema_by_name_and_restarts_for_new_layers():
    net = nn.Sequential(nn.Linear(2, 3), nn.Linear(3, 1))
    average = ParameterAverage(net, decay=0.75)
    average.update()  # the first update starts from the current weights
    start = net[0].weight.detach().clone()
    with torch.no_grad():
        net[0].weight.add_(4.0)
    average.update()
    assert torch.allclose(average.average["0.weight"], start + 1.0)  # 0.75 * w + 0.25 * (w + 4)
    with average.swapped_in():
        assert torch.equal(net[0].weight, average.average["0.weight"])
    assert torch.equal(net[0].weight, start + 4.0)  # the trained weights are back
    net[1] = nn.Sequential(nn.Linear(3, 1, bias=False), nn.Linear(1, 1))  # as SVD factoring replaces a layer
    average.update()
    assert set(average.average) == {"0.weight", "0.bias", "1.0.weight", "1.1.weight", "1.1.bias"}
    assert torch.equal(average.average["1.0.weight"], net[1][0].weight)


def test_checkpoints_ship_the_averaged_generator_and_resume_from_the_trained_one(tmp_path):
    module = gan(ema_decay=0.9)
    trainer = gan_trainer(tmp_path, max_epochs=1, limit_train_batches=4, limit_val_batches=0)
    trainer.fit(module, datamodule=digits())
    trainer.save_checkpoint(tmp_path / "a.ckpt")
    ckpt = torch.load(tmp_path / "a.ckpt", weights_only=True)
    trained = {name: p.detach().clone() for name, p in module.net.generator.named_parameters()}
    average = module.generator_average.average
    assert set(average) == set(trained)
    assert not all(torch.equal(average[name], trained[name]) for name in trained)
    for name in trained:  # what load_weights (evaluate, export, test) reads is the average
        assert torch.equal(ckpt["state_dict"][f"net.generator.{name}"], average[name])
        assert torch.equal(ckpt["generator_average"]["trained"][name], trained[name])
    resumed = gan(ema_decay=0.9)
    resumed.on_load_checkpoint(ckpt)  # what trainer.fit(ckpt_path=...) does before loading the state dict
    resumed.load_state_dict(ckpt["state_dict"])
    for name, p in resumed.net.generator.named_parameters():
        assert torch.equal(p, trained[name]) and torch.equal(resumed.generator_average.average[name], average[name])
