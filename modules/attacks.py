"""White-box evasion attacks in pixel units, as configured (conf/attack/): FGSM, PGD under L-inf
and L2 (modules/perturbations.py), same-norm random noise (the baseline any attack must beat) and
AutoAttack (Croce & Hein 2020, from torchattacks).

Every attack works on images in [0, 1] and a model that takes them (modules/pixel_model.py: the
data's normalization moved inside the model), so `eps` means the same thing whatever
`data.normalize` says, and every adversarial image is clipped to [0, 1].
"""

from __future__ import annotations

import importlib.util
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from torch import nn

from modules.perturbations import NORMS, check_eps, check_steps, fgsm, gradients_on, pgd, random_in_ball

__all__ = ["FGSM", "PGD", "Attack", "AutoAttack", "RandomNoise", "WhiteBoxAttack"]


class Attack(ABC):
    """An attack as configured (conf/attack/): its strengths `eps` (pixel units, each in [0, 1]) and
    how many test samples it is evaluated on (`max_samples`, null: the whole test split).

    `check_arguments` refuses bad values from plain config (the start-up checks of recipes.train
    call it before anything trains); the constructor calls it too."""

    name: ClassVar[str]
    #: True when the attack must only see the target's predicted labels (modules.transfer_attack).
    black_box: ClassVar[bool] = False

    def __init__(self, eps: list[float], max_samples: int | None = None) -> None:
        self.check_arguments({"eps": eps, "max_samples": max_samples})
        self.eps = [float(e) for e in eps]
        self.max_samples = max_samples

    @classmethod
    def check_arguments(cls, arguments: dict[str, Any]) -> None:
        eps = arguments.get("eps", [0.1])
        if isinstance(eps, str) or not isinstance(eps, Sequence) or not eps:
            raise ValueError(
                f"attack.eps={eps} must be a non-empty list of strengths in [0, 1], e.g. attack.eps=[0.05,0.1,0.2]"
            )
        for value in eps:
            check_eps(value)
        samples = arguments.get("max_samples")
        if samples is not None and (isinstance(samples, bool) or not isinstance(samples, int) or samples < 1):
            raise ValueError(f"attack.max_samples={samples} must be a positive count or null (the whole test split)")

    def describe(self, eps: float) -> dict[str, Any]:
        """The settings robustness.json records beside the figures at strength `eps`."""
        return {"attack": self.name}


class WhiteBoxAttack(Attack):
    """An attack that may read the model's gradients: `perturb` gets the pixel-space model itself."""

    @abstractmethod
    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float) -> torch.Tensor:
        """Adversarial versions of the images `x` (in [0, 1]) with labels `y`, within eps."""


class FGSM(WhiteBoxAttack):
    name = "fgsm"

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float) -> torch.Tensor:
        return fgsm(model, x, y, eps)


class PGD(WhiteBoxAttack):
    """PGD with `steps` steps of `step_size` (null: 2.5 * eps / steps, Madry et al.), `restarts`
    random starts, under the `norm` ball."""

    name = "pgd"

    def __init__(
        self,
        eps: list[float],
        steps: int = 20,
        step_size: float | None = None,
        norm: str = "linf",
        random_start: bool = True,
        restarts: int = 1,
        max_samples: int | None = None,
    ) -> None:
        super().__init__(eps, max_samples)
        self.check_arguments({"steps": steps, "step_size": step_size, "norm": norm, "restarts": restarts})
        self.steps, self.step_size, self.norm = steps, step_size, norm
        self.random_start, self.restarts = random_start, restarts
        self.name = "pgd" if norm == "linf" else f"pgd_{norm}"

    @classmethod
    def check_arguments(cls, arguments: dict[str, Any]) -> None:
        super().check_arguments(arguments)
        check_steps(arguments.get("steps", 1), "attack.steps")
        check_steps(arguments.get("restarts", 1), "attack.restarts")
        norm = arguments.get("norm", "linf")
        if norm not in NORMS:
            raise ValueError(f"attack.norm={norm} must be one of {', '.join(NORMS)}")
        size = arguments.get("step_size")
        if size is not None and not size > 0:
            raise ValueError(f"attack.step_size={size} must be positive, or null for 2.5 * eps / steps")

    def size_for(self, eps: float) -> float:
        return self.step_size if self.step_size is not None else 2.5 * eps / self.steps

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float) -> torch.Tensor:
        return pgd(model, x, y, eps, self.steps, self.size_for(eps), self.norm, self.random_start, self.restarts)

    def describe(self, eps: float) -> dict[str, Any]:
        return {
            "attack": self.name,
            "norm": self.norm,
            "steps": self.steps,
            "restarts": self.restarts,
            "step_size": self.size_for(eps),
        }


class RandomNoise(WhiteBoxAttack):
    """Uniform random noise in the same eps ball: the damage an attack does beyond chance."""

    name = "noise"

    def __init__(self, eps: list[float], norm: str = "linf", max_samples: int | None = None) -> None:
        super().__init__(eps, max_samples)
        if norm not in NORMS:
            raise ValueError(f"attack.norm={norm} must be one of {', '.join(NORMS)}")
        self.norm = norm

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float) -> torch.Tensor:
        return (x + random_in_ball(x, eps, self.norm)).clamp(0, 1)


class AutoAttack(WhiteBoxAttack):
    """AutoAttack (Croce & Hein 2020) from torchattacks: APGD-CE, APGD-T, FAB-T and Square, the
    strong evaluation (PGD alone overstates robustness). `version`: standard, plus or rand."""

    name = "autoattack"

    def __init__(
        self,
        eps: list[float],
        norm: str = "linf",
        version: str = "standard",
        seed: int = 0,
        max_samples: int | None = None,
    ) -> None:
        super().__init__(eps, max_samples)
        if norm not in NORMS:
            raise ValueError(f"attack.norm={norm} must be one of {', '.join(NORMS)}")
        if version not in ("standard", "plus", "rand"):
            raise ValueError(f"attack.version={version} must be one of standard, plus, rand")
        if importlib.util.find_spec("torchattacks") is None:
            raise ValueError(
                "attack=autoattack needs torchattacks, which is not installed: pip install -e '.[attacks]'"
            )
        self.norm, self.version, self.seed = norm, version, seed

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float) -> torch.Tensor:
        import torchattacks  # optional dependency (the `attacks` extra), checked in __init__

        classes = int(model(x[:1]).shape[1])
        attack = torchattacks.AutoAttack(
            model,
            norm="Linf" if self.norm == "linf" else "L2",
            eps=eps,
            version=self.version,
            n_classes=classes,
            seed=self.seed,
        )
        with gradients_on():
            return attack(x.detach().clone(), y.clone()).detach()

    def describe(self, eps: float) -> dict[str, Any]:
        return {"attack": self.name, "norm": self.norm, "version": self.version}
