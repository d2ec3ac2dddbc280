"""The black-box transfer attack of Papernot et al. 2017 ("Practical Black-Box Attacks against Machine
Learning"): the attacker sees only the target's predicted labels. A substitute net is trained on a
small seed set labelled by querying the target, the set is grown by Jacobian-based dataset
augmentation for a few rounds (each image moved by `lam` along the sign of the substitute's gradient
of the label the target gave it, then labelled by the target too), and FGSM or PGD on the substitute
makes the adversarial images that are then shown to the target.

The target reaches this module only as a `LabelOracle`: a function from images to labels, queried
under no_grad. Nothing here can read its weights or gradients (tests/modules/test_attacks.py proves it with
an oracle whose labels come through NumPy and weights that raise if a gradient ever reaches them).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from modules.attacks import Attack
from modules.perturbations import check_steps, fgsm, gradients_on, pgd

__all__ = ["LabelOracle", "METHODS", "Transfer"]

METHODS = ("fgsm", "pgd")


class LabelOracle:
    """A target model as the black box it is to an attacker: images in [0, 1] go in, predicted labels
    come out, and `queries` counts the images it was asked about. It holds only `predict`, a function."""

    def __init__(self, predict: Callable[[torch.Tensor], torch.Tensor]) -> None:
        self._predict = predict
        self.queries = 0

    @classmethod
    def of(cls, model: nn.Module, batch_size: int = 1024) -> LabelOracle:
        """The oracle of a pixel-space model (modules.pixel_model.PixelModel): argmax labels, in batches."""

        def predict(x: torch.Tensor) -> torch.Tensor:
            return torch.cat([model(chunk).argmax(dim=1) for chunk in x.split(batch_size)])

        return cls(predict)

    def labels(self, x: torch.Tensor) -> torch.Tensor:
        self.queries += x.shape[0]
        with torch.no_grad():
            return self._predict(x.detach().clone()).detach().long().to(x.device)


class Transfer(Attack):
    """Papernot's substitute-model attack. `substitute` builds the attacker's own net (a partial of a
    modules.nets class, sized by the images and the class count); `seed_size` images of the
    attacker's pool (the validation split: never the test images) are labelled by the target, and
    `rounds` rounds of training (`substitute_epochs` each) with Jacobian augmentation in between grow
    the set to seed_size * 2^(rounds - 1). Then `method` (fgsm, or pgd with `steps`) on the substitute."""

    name = "transfer"
    black_box = True

    def __init__(
        self,
        eps: list[float],
        substitute: Callable[..., nn.Module],
        method: str = "fgsm",
        steps: int = 10,
        seed_size: int = 150,
        rounds: int = 5,
        lam: float = 0.1,
        substitute_epochs: int = 10,
        lr: float = 0.001,
        batch_size: int = 64,
        seed: int = 0,
        max_samples: int | None = None,
    ) -> None:
        super().__init__(eps, max_samples)
        self.check_arguments(
            {
                "method": method,
                "steps": steps,
                "seed_size": seed_size,
                "rounds": rounds,
                "lam": lam,
                "substitute_epochs": substitute_epochs,
                "lr": lr,
                "batch_size": batch_size,
            }
        )
        self.build_substitute, self.method, self.steps = substitute, method, steps
        self.seed_size, self.rounds, self.lam = seed_size, rounds, lam
        self.substitute_epochs, self.lr, self.batch_size, self.seed = substitute_epochs, lr, batch_size, seed
        self.substitute: nn.Module | None = None
        self.substitute_samples = 0

    @classmethod
    def check_arguments(cls, arguments: dict[str, Any]) -> None:
        super().check_arguments(arguments)
        method = arguments.get("method", "fgsm")
        if method not in METHODS:
            raise ValueError(f"attack.method={method} must be one of {', '.join(METHODS)}")
        for key in ("steps", "seed_size", "rounds", "substitute_epochs", "batch_size"):
            check_steps(arguments.get(key, 1), f"attack.{key}")
        for key in ("lam", "lr"):
            value = arguments.get(key, 0.1)
            if not value > 0:
                raise ValueError(f"attack.{key}={value} must be positive")

    def fit_substitute(self, oracle: LabelOracle, pool: torch.Tensor, num_classes: int) -> None:
        """Train the substitute from the oracle's labels of `pool[:seed_size]`, growing the set by
        Jacobian augmentation between rounds. `pool`: the attacker's unlabelled images in [0, 1]."""
        with torch.random.fork_rng(devices=[pool.device] if pool.is_cuda else []):
            torch.manual_seed(self.seed)
            net = self.build_substitute(input_shape=list(pool.shape[1:]), num_classes=num_classes).to(pool.device)
            optimizer = torch.optim.Adam(net.parameters(), lr=self.lr)
            images = pool[: self.seed_size].detach().clone()
            labels = oracle.labels(images)
            for round_index in range(self.rounds):
                self.train_round(net, optimizer, images, labels)
                if round_index < self.rounds - 1:
                    new = self.jacobian_augment(net, images, labels)
                    images, labels = torch.cat([images, new]), torch.cat([labels, oracle.labels(new)])
        self.substitute = net.eval()
        self.substitute_samples = images.shape[0]

    def train_round(
        self, net: nn.Module, optimizer: torch.optim.Optimizer, images: torch.Tensor, labels: torch.Tensor
    ) -> None:
        net.train()
        with gradients_on():
            for _ in range(self.substitute_epochs):
                for index in torch.randperm(images.shape[0], device=images.device).split(self.batch_size):
                    optimizer.zero_grad()
                    F.cross_entropy(net(images[index]), labels[index]).backward()
                    optimizer.step()

    def jacobian_augment(self, net: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Each image moved by lam along sign(d F_label(x) / dx): towards the target's decision
        boundary as the substitute sees it, where new labels teach the substitute most."""
        net.eval()
        with gradients_on():
            x = images.clone().requires_grad_(True)
            picked = net(x).gather(1, labels.view(-1, 1)).sum()
            grad = torch.autograd.grad(picked, x)[0]
        return (images + self.lam * grad.sign()).clamp(0, 1).detach()

    def perturb(self, x: torch.Tensor, y: torch.Tensor, eps: float) -> torch.Tensor:
        """White-box FGSM / PGD on the substitute, for images `x` with the oracle's labels `y`."""
        if self.substitute is None:
            raise RuntimeError("fit_substitute has not run")
        if self.method == "fgsm":
            return fgsm(self.substitute, x, y, eps)
        return pgd(self.substitute, x, y, eps, self.steps, 2.5 * eps / self.steps)

    def describe(self, eps: float) -> dict[str, Any]:
        return {
            "attack": self.name,
            "method": self.method,
            "seed_size": self.seed_size,
            "rounds": self.rounds,
            "lam": self.lam,
            "substitute_samples": self.substitute_samples,
        }
