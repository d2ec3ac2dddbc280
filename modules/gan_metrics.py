"""Offline GAN metrics in the features of a classifier this project trained on the same data: no
Inception weights, no download. Frechet distance is torchmetrics' FrechetInceptionDistance given that
classifier's penultimate features as its custom `feature` extractor."""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn
from torchmetrics.image.fid import FrechetInceptionDistance

__all__ = ["GanScores", "PenultimateFeatures", "class_coverage", "frechet_distance", "last_linear"]


def last_linear(net: nn.Module) -> nn.Linear:
    linears = [m for m in net.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError("the feature classifier (task.feature_ckpt) has no Linear head to take features before")
    return linears[-1]


class PenultimateFeatures(nn.Module):
    """The input of a classifier's last Linear layer (its penultimate features), and its logits.

    The classifier is deliberately not a submodule (like the distillation teacher): it is frozen,
    never in the GAN's checkpoint or optimizers; `to()` moves it explicitly.
    """

    def __init__(self, classifier: nn.Module) -> None:
        super().__init__()
        object.__setattr__(self, "classifier", classifier.eval().requires_grad_(False))
        head = last_linear(classifier)
        self.num_features = head.in_features  # torchmetrics reads this instead of probing with a dummy image
        self._captured: torch.Tensor | None = None
        head.register_forward_pre_hook(self._capture)

    def _capture(self, module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        self._captured = args[0].flatten(1)

    def move(self, device: torch.device) -> None:
        self.classifier.to(device).eval()

    @torch.no_grad()
    def features_and_logits(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.classifier(images)
        features, self._captured = self._captured, None
        return features, logits

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.features_and_logits(images)[0]


def frechet_distance(features: PenultimateFeatures) -> FrechetInceptionDistance:
    """A Frechet distance metric over `features` (update(images, real=...), compute, reset)."""
    return FrechetInceptionDistance(feature=features, reset_real_features=True)


def class_coverage(predicted: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Normalized entropy of the predicted class histogram: 1.0 = every class equally often, 0 = one class."""
    share = torch.bincount(predicted, minlength=num_classes).double() / max(1, predicted.numel())
    entropy = -(share[share > 0] * share[share > 0].log()).sum()
    return entropy / math.log(num_classes)


class GanScores(nn.Module):
    """The GAN's metrics in the features of one frozen classifier: `val/fd` (samples of the fixed
    latent batch against the validation images) and, at test, `test/fd` (fresh samples against the
    test images), `test/fd_real` (the training images against the test images: the floor a perfect
    generator would reach), `test/class_coverage` and, for a conditional GAN, `test/cond_acc` (how
    often the classifier names the class the samples were asked for). No state-dict entries."""

    def __init__(self, classifier: nn.Module) -> None:
        super().__init__()
        self.features = PenultimateFeatures(classifier)
        self.val_fd = frechet_distance(self.features)
        self.test_fd, self.test_fd_real = frechet_distance(self.features), frechet_distance(self.features)

    def move(self, device: torch.device) -> None:
        self.features.move(device)

    def add_real(self, images: torch.Tensor, stage: str) -> None:
        """A batch of real images of the `val` or `test` split."""
        for metric in (self.val_fd,) if stage == "val" else (self.test_fd, self.test_fd_real):
            metric.update(images, real=True)

    def val_fd_of(self, samples: torch.Tensor) -> torch.Tensor:
        """`val/fd` of `samples` against the validation images added since the last call."""
        self.val_fd.update(samples, real=False)
        distance = self.val_fd.compute()
        self.val_fd.reset()
        return distance

    def test_metrics(
        self,
        samples: torch.Tensor,
        labels: torch.Tensor,
        training_images: Iterable[torch.Tensor],
        num_classes: int,
        conditional: bool,
    ) -> dict[str, torch.Tensor]:
        """The test metrics of `samples` (asked for `labels`), the test images added since the last call
        and the batches of `training_images`."""
        self.test_fd.update(samples, real=False)
        predicted = self.features.features_and_logits(samples)[1].argmax(dim=1)
        for images in training_images:
            self.test_fd_real.update(images, real=False)
        metrics = {
            "test/fd": self.test_fd.compute(),
            "test/fd_real": self.test_fd_real.compute(),
            "test/class_coverage": class_coverage(predicted, num_classes).float(),
        }
        if conditional:
            metrics["test/cond_acc"] = (predicted == labels).float().mean()
        self.test_fd.reset()
        self.test_fd_real.reset()
        return metrics
