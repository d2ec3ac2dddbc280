"""modules/perturbations.py, modules/attacks.py and modules/transfer_attack.py on tiny models and the
embedded digits: FGSM is the analytic step on a linear model, PGD keeps to the eps ball and [0, 1]
under normalized data and is at least as strong as FGSM, both agree with torchattacks on the same
model and inputs, and the transfer attack works from the target's labels alone."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchattacks
from torch import nn

from modules.nets.mlp import MLP
from modules.perturbations import fgsm, pgd
from modules.pixel_model import PixelModel
from modules.transfer_attack import LabelOracle, Transfer
from recipes.data.digits import DigitsDataModule

MEAN, STD = [0.3053], [0.3760]  # conf/data/digits.yaml's normalization


@pytest.fixture(scope="module")
def digits() -> DigitsDataModule:
    data = DigitsDataModule(normalize={"mean": MEAN, "std": STD}, batch_size=512)
    data.setup("fit")
    return data


def split(data: DigitsDataModule, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = next(iter(getattr(data, f"{name}_dataloader")()))
    return x, y


@pytest.fixture(scope="module")
def trained(digits: DigitsDataModule) -> PixelModel:
    """A logistic-regression-sized MLP trained on the (normalized) digits, seen from pixel space."""
    torch.manual_seed(0)
    net = MLP((1, 8, 8), 10, hidden=[64])
    optimizer = torch.optim.Adam(net.parameters(), lr=0.01)
    x, y = split(digits, "train")
    for _ in range(150):
        optimizer.zero_grad()
        F.cross_entropy(net(x), y).backward()
        optimizer.step()
    return PixelModel(net.eval(), *digits.pixel_normalization())


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float((model(x).argmax(dim=1) == y).float().mean())


def test_fgsm_on_a_linear_model_is_the_analytic_sign_step() -> None:
    """Two classes, logits (0, w.x + b): for label 1 the loss falls along w, so FGSM moves every pixel
    by -eps * sign(w) (normalization by a positive std does not change a sign)."""
    torch.manual_seed(0)
    linear = nn.Sequential(nn.Flatten(), nn.Linear(64, 1))
    net = lambda x: torch.cat([torch.zeros(len(x), 1), linear(x)], dim=1)  # noqa: E731 - a tiny model
    model = PixelModel(_Wrap(net), MEAN, STD)
    x = torch.full((3, 1, 8, 8), 0.5)
    y = torch.ones(3, dtype=torch.long)
    eps = 0.1
    expected = (x - eps * linear[1].weight.detach().sign().view(1, 1, 8, 8)).clamp(0, 1)
    assert torch.allclose(fgsm(model, x, y, eps), expected, atol=1e-7)


class _Wrap(nn.Module):
    def __init__(self, fn) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x)


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_pgd_stays_in_the_eps_ball_and_in_pixel_range_under_normalized_data(digits, trained, norm) -> None:
    x, y = split(digits, "test")
    pixels = trained.to_pixels(x)
    assert pixels.min() >= 0 and pixels.max() <= 1 and (x.min() < 0 or x.max() > 1)  # the loader's are normalized
    eps = 0.1 if norm == "linf" else 1.0
    adv = pgd(trained, pixels, y, eps, steps=10, step_size=eps / 2, norm=norm, restarts=2)
    assert adv.min() >= 0 and adv.max() <= 1
    delta = (adv - pixels).flatten(1)
    size = delta.abs().amax(dim=1) if norm == "linf" else delta.norm(dim=1)
    assert float(size.max()) <= eps + 1e-5
    assert accuracy(trained, adv, y) < accuracy(trained, pixels, y) - 0.1  # and it does damage


def test_pgd_is_at_least_as_strong_as_fgsm(digits, trained) -> None:
    x, y = split(digits, "test")
    pixels = trained.to_pixels(x)
    for eps in (0.05, 0.1):
        torch.manual_seed(0)
        by_pgd = accuracy(trained, pgd(trained, pixels, y, eps, steps=20, step_size=2.5 * eps / 20, restarts=2), y)
        by_fgsm = accuracy(trained, fgsm(trained, pixels, y, eps), y)
        assert by_pgd <= by_fgsm, (eps, by_pgd, by_fgsm)


def test_fgsm_and_pgd_agree_with_torchattacks(digits, trained) -> None:
    """The same model, inputs and settings (no random start, so both are deterministic)."""
    x, y = split(digits, "test")
    pixels = trained.to_pixels(x)[:100]
    y = y[:100]
    ours = fgsm(trained, pixels, y, 0.1)
    theirs = torchattacks.FGSM(trained, eps=0.1)(pixels, y)
    assert (ours - theirs).abs().max() < 1e-6
    ours = pgd(trained, pixels, y, 0.1, steps=10, step_size=0.02, random_start=False)
    theirs = torchattacks.PGD(trained, eps=0.1, alpha=0.02, steps=10, random_start=False)(pixels, y)
    assert (ours - theirs).abs().max() < 1e-5
    ours = pgd(trained, pixels, y, 1.0, steps=10, step_size=0.2, norm="l2", random_start=False)
    theirs = torchattacks.PGDL2(trained, eps=1.0, alpha=0.2, steps=10, random_start=False)(pixels, y)
    # torchattacks adds 1e-10 to the norm of the batch-mean gradient, which is itself ~1e-9 for the most
    # confident samples: their steps differ slightly; the attacked predictions do not.
    assert (ours - theirs).abs().max() < 1e-2
    with torch.no_grad():
        assert torch.equal(trained(ours).argmax(dim=1), trained(theirs).argmax(dim=1))


def test_transfer_attack_reads_only_the_targets_labels(digits, trained) -> None:
    """The target answers through NumPy (no autograd link can survive), every forward of it runs with
    gradients off, and a gradient reaching any of its weights would raise: the attack still trains a
    substitute from the labels and moves the target's accuracy down more than the same-size noise."""
    target = trained.net
    calls = []
    target.register_forward_pre_hook(lambda module, args: calls.append(torch.is_grad_enabled()))
    for parameter in target.parameters():
        parameter.grad = None  # left by the fixture's training
        parameter.register_hook(lambda grad: (_ for _ in ()).throw(AssertionError("a target gradient was computed")))

    def labels_through_numpy(images: torch.Tensor) -> torch.Tensor:
        array = images.detach().cpu().numpy().copy()
        with torch.no_grad():
            scores = trained(torch.from_numpy(array)).numpy()
        return torch.from_numpy(np.argmax(scores, axis=1))

    oracle = LabelOracle(labels_through_numpy)
    attack = Transfer([0.2], functools.partial(MLP, hidden=[100]), rounds=3, substitute_epochs=5, seed_size=100)
    pool, _ = split(digits, "val")
    attack.fit_substitute(oracle, trained.to_pixels(pool), num_classes=10)
    assert attack.substitute_samples == 100 * 2**2 and oracle.queries == attack.substitute_samples
    assert calls and not any(calls)
    assert all(p.grad is None for p in target.parameters())
    x, y = split(digits, "test")
    pixels = trained.to_pixels(x)
    adv = attack.perturb(pixels, oracle.labels(pixels), 0.2)
    assert (adv - pixels).abs().max() <= 0.2 + 1e-6 and adv.min() >= 0 and adv.max() <= 1
    noise = (pixels + torch.empty_like(pixels).uniform_(-0.2, 0.2)).clamp(0, 1)
    assert accuracy(trained, adv, y) < accuracy(trained, noise, y) - 0.05
