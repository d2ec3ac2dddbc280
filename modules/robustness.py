"""Robustness of a classifier under one configured attack, measured by a Lightning test loop (so it
runs on the trainer's device and precision): clean accuracy, and for each eps the robust accuracy
(correct on the clean image and on its adversarial version) and the attack's success rate (the share
of clean-correct images the attack turns wrong)."""

from __future__ import annotations

import time
from typing import Any

import lightning.pytorch as pl
import torch
from typing_extensions import override

from modules.attacks import Attack, WhiteBoxAttack
from modules.perturbations import gradients_on, seeded
from modules.pixel_model import PixelModel
from modules.transfer_attack import LabelOracle, Transfer

__all__ = ["RobustnessProbe"]


class RobustnessProbe(pl.LightningModule):
    """Attacks `model` (a PixelModel: the classifier seen from [0, 1] pixels) on the test batches.

    A black-box attack (Transfer) gets the model only as a LabelOracle, and trains its substitute
    once, at test start, from `pool` (the attacker's unlabelled images in [0, 1]: the validation
    split) and the oracle's labels; its adversarial images are judged by the oracle too."""

    def __init__(self, model: PixelModel, attack: Attack, num_classes: int, pool: torch.Tensor | None = None) -> None:
        super().__init__()
        if attack.black_box and pool is None:
            raise ValueError(f"attack={attack.name} needs the attacker's own images (the validation split)")
        self.model, self.attack, self.num_classes, self.pool = model, attack, num_classes, pool
        self.oracle = LabelOracle.of(model)
        self.seen = 0
        self.clean_correct = 0
        self.robust_correct = [0] * len(attack.eps)
        self.seconds = [0.0] * len(attack.eps)

    @override
    def on_test_start(self) -> None:
        if isinstance(self.attack, Transfer):
            self.attack.fit_substitute(self.oracle, self.pool.to(self.device), self.num_classes)

    @override
    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x, y = batch[0], batch[1]
        room = len(y) if self.attack.max_samples is None else self.attack.max_samples - self.seen
        if room <= 0:
            return
        with gradients_on(), seeded(batch_idx, x.device):  # random starts: the same figures every run
            pixels, y = self.model.to_pixels(x[:room].clone()), y[:room].clone()
            clean = self.oracle.labels(pixels) == y
            for i, eps in enumerate(self.attack.eps):
                start = time.perf_counter()
                adv = self.adversarial(pixels, y, eps)
                self.seconds[i] += time.perf_counter() - start
                self.robust_correct[i] += int((clean & (self.oracle.labels(adv) == y)).sum())
        self.seen += len(y)
        self.clean_correct += int(clean.sum())

    def adversarial(self, pixels: torch.Tensor, y: torch.Tensor, eps: float) -> torch.Tensor:
        if isinstance(self.attack, WhiteBoxAttack):
            return self.attack.perturb(self.model, pixels, y, eps)
        if isinstance(self.attack, Transfer):  # the substitute crafts against the target's own labels
            return self.attack.perturb(pixels, self.oracle.labels(pixels), eps)
        raise TypeError(f"{type(self.attack).__name__} is neither a WhiteBoxAttack nor a Transfer attack")

    def report(self) -> dict[str, Any]:
        """robustness.json's content (rates in [0, 1]; docs/adversarial.md)."""
        if not self.seen:
            raise ValueError("the test split gave no samples to attack")
        clean = self.clean_correct / self.seen
        results = []
        for eps, robust, seconds in zip(self.attack.eps, self.robust_correct, self.seconds):
            results.append(
                {
                    **self.attack.describe(eps),
                    "eps": eps,
                    "robust_acc": robust / self.seen,
                    "success_rate": 1 - robust / self.clean_correct if self.clean_correct else None,
                    "seconds": round(seconds, 3),
                }
            )
        report = {"clean_acc": clean, "samples": self.seen, "results": results}
        if self.attack.black_box:
            report["oracle_queries"] = self.oracle.queries
        return report
