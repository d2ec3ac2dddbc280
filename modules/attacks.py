"""White-box evasion attacks in pixel units: FGSM (Goodfellow et al. 2015), PGD under L-inf and L2
with random start and restarts (Madry et al. 2018), same-norm random noise (the baseline any attack
must beat) and AutoAttack (Croce & Hein 2020, from torchattacks).

Every attack works on images in [0, 1] and a model that takes them (`PixelModel`: the data's
normalization moved inside the model), so `eps` means the same thing whatever `data.normalize`
says, and every adversarial image is clipped to [0, 1].

FGSM and PGD are written here rather than called from torchattacks because adversarial training
runs them inside training steps: they take gradients with respect to the input only (no parameter
gradient is touched, so DDP and the optimizer never see them), leave the model's train/eval mode as
it is, and work under Lightning's inference mode. tests/modules/test_attacks.py checks them against
torchattacks on the same model and inputs.
"""

from __future__ import annotations

import contextlib
import importlib.util
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from typing import Any, ClassVar, Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch import nn

NORMS = ("linf", "l2")


@contextlib.contextmanager
def gradients_on() -> Iterator[None]:
    """Autograd on, even inside Lightning's validation / test loops (which run under
    `torch.inference_mode()` or `torch.no_grad()`): an attack needs the gradient of the loss with
    respect to its input. Tensors made inside inference mode must be cloned in here before use."""
    with torch.inference_mode(False), torch.enable_grad():
        yield


@runtime_checkable
class PixelNormalized(Protocol):
    """A data module that says how its images were normalized (recipes.data's modules do)."""

    def pixel_normalization(self) -> tuple[list[float], list[float]] | None:
        """Per-channel (mean, std) of the normalization applied after [0, 1], or None for none."""


def normalization_of(datamodule: Any) -> tuple[list[float], list[float]] | None:
    """The (mean, std) a data module normalizes its images with (None: none)."""
    if not isinstance(datamodule, PixelNormalized):
        raise ValueError(
            f"{type(datamodule).__name__} does not say how its images are normalized "
            "(pixel_normalization), so eps cannot be measured in pixel units"
        )
    return datamodule.pixel_normalization()


@contextlib.contextmanager
def seeded(seed: int, device: torch.device) -> Iterator[None]:
    """Random starts drawn from `seed`, the global RNG streams untouched: an evaluation (a batch's
    PGD) gives the same figures in recipes.train, recipes.evaluate and recipes.attack."""
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        yield


class PixelModel(nn.Module):
    """`net` seen from pixel space: takes images in [0, 1] and normalizes them as the data module does
    (`mean` / `std` per channel, or none) before the net. The attacks only ever see this model."""

    def __init__(self, net: nn.Module, mean: Sequence[float] | None = None, std: Sequence[float] | None = None) -> None:
        super().__init__()
        self.net = net
        shape = (1, -1, 1, 1)
        mean_t = torch.tensor(list(mean) if mean is not None else [0.0]).view(shape)
        std_t = torch.tensor(list(std) if std is not None else [1.0]).view(shape)
        self.register_buffer("mean", mean_t, persistent=False)
        self.register_buffer("std", std_t, persistent=False)

    @classmethod
    def of(cls, net: nn.Module, datamodule: Any) -> PixelModel:
        """`net` in the pixel space of `datamodule`'s images."""
        return cls(net, *(normalization_of(datamodule) or (None, None)))

    def to_pixels(self, x: torch.Tensor) -> torch.Tensor:
        """Normalized images (as the data loader gives them) back to [0, 1]."""
        return (x * self.std.to(x) + self.mean.to(x)).clamp(0, 1)

    def to_inputs(self, pixels: torch.Tensor) -> torch.Tensor:
        """Images in [0, 1] as the net expects them."""
        return (pixels - self.mean.to(pixels)) / self.std.to(pixels)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.net(self.to_inputs(pixels))


def check_eps(eps: float, key: str = "attack.eps") -> None:
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not 0 <= eps <= 1:
        raise ValueError(
            f"{key}={eps} must be in [0, 1] (pixel units of images in [0, 1], before normalization), e.g. {key}=0.1"
        )


def check_steps(steps: int, key: str) -> None:
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"{key}={steps} must be an integer >= 1, e.g. {key}=10")


def input_gradient(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """d CE(model(x), y) / dx, summed over the batch (so each sample's gradient is its own), without
    touching any parameter's .grad."""
    x = x.detach().clone().requires_grad_(True)
    loss = F.cross_entropy(model(x), y.clone(), reduction="sum")  # a clone: y may be an inference tensor
    return torch.autograd.grad(loss, x)[0]


def fgsm(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float) -> torch.Tensor:
    """One signed-gradient step of size eps (Goodfellow et al. 2015), clipped to [0, 1]."""
    with gradients_on():
        return (x + eps * input_gradient(model, x, y).sign()).clamp(0, 1).detach()


def project(delta: torch.Tensor, eps: float, norm: str) -> torch.Tensor:
    """`delta` projected onto the eps ball of `norm` (per sample)."""
    if norm == "linf":
        return delta.clamp(-eps, eps)
    norms = delta.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *[1] * (delta.dim() - 1))
    return delta * (eps / norms).clamp(max=1.0)


def random_in_ball(x: torch.Tensor, eps: float, norm: str) -> torch.Tensor:
    """A uniform random point of the eps ball around 0 (L-inf: a uniform cube; L2: uniform in the ball)."""
    if norm == "linf":
        return torch.empty_like(x).uniform_(-eps, eps)
    direction = torch.randn_like(x)
    direction = direction / direction.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *[1] * (x.dim() - 1))
    radius = torch.rand(x.shape[0], device=x.device, dtype=x.dtype) ** (1.0 / x[0].numel())
    return direction * (eps * radius).view(-1, *[1] * (x.dim() - 1))


def ascent_step(grad: torch.Tensor, step_size: float, norm: str) -> torch.Tensor:
    """The steepest-ascent step of `norm`: the gradient's sign (L-inf) or its direction (L2)."""
    if norm == "linf":
        return step_size * grad.sign()
    norms = grad.flatten(1).norm(dim=1).view(-1, *[1] * (grad.dim() - 1)) + 1e-10
    return step_size * grad / norms


def pgd(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    steps: int,
    step_size: float,
    norm: str = "linf",
    random_start: bool = True,
    restarts: int = 1,
) -> torch.Tensor:
    """Projected gradient ascent on the cross-entropy inside the eps ball of `norm` and [0, 1]
    (Madry et al. 2018). With several restarts, each sample keeps the first restart that fools the
    model (else the last one)."""
    with gradients_on():
        x = x.detach().clone()
        best = x.clone()
        fooled = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
        for _ in range(restarts):
            delta = random_in_ball(x, eps, norm) if random_start else torch.zeros_like(x)
            adv = (x + delta).clamp(0, 1)
            for _ in range(steps):
                adv = adv + ascent_step(input_gradient(model, adv, y), step_size, norm)
                adv = (x + project(adv - x, eps, norm)).clamp(0, 1).detach()
            if restarts == 1:
                return adv
            with torch.no_grad():
                now = model(adv).argmax(dim=1) != y
            take = ~fooled
            best[take] = adv[take]
            fooled |= now
        return best


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
