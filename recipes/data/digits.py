"""scikit-learn's bundled 8x8 digits: the embedded default data set (no network, no files)."""

from __future__ import annotations

from typing import Any

import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from typing_extensions import override

from recipes.data.base import ImageDataModule

__all__ = ["DigitsDataModule"]


class DigitsDataModule(ImageDataModule):
    """1797 grayscale 8x8 digits, split stratified into train/val/test by `split_seed`.

    The data is small enough to preprocess once: resize, channels, domain shift and (without
    augmentation) normalization run over the whole tensor at setup, not per sample; augmentation
    runs per batch (recipes/data/base.py).
    """

    native_channels = 1
    native_size = 8
    num_classes = 10

    def __init__(self, val_fraction: float = 0.1, test_fraction: float = 0.2, **common: Any) -> None:
        super().__init__(**common)
        if not (0 < val_fraction < 1 and 0 < test_fraction < 1 and val_fraction + test_fraction < 1):
            raise ValueError(
                f"data.val_fraction={val_fraction} and data.test_fraction={test_fraction} must be in (0, 1) "
                "and sum to less than 1"
            )
        self.val_fraction, self.test_fraction = val_fraction, test_fraction

    def split_indices(self, labels: Any) -> dict[str, Any]:
        """Stratified, seeded train/val/test indices into the 1797 images."""
        all_idx = range(len(labels))
        rest, test = train_test_split(
            all_idx, test_size=self.test_fraction, stratify=labels, random_state=self.split_seed
        )
        train, val = train_test_split(
            rest,
            test_size=self.val_fraction / (1 - self.test_fraction),
            stratify=[labels[i] for i in rest],
            random_state=self.split_seed,
        )
        return {"train": sorted(train), "val": sorted(val), "test": sorted(test)}

    @override
    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        bunch = load_digits()
        images = torch.tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / 16.0  # N x 1 x 8 x 8 in [0, 1]
        labels = torch.tensor(bunch.target, dtype=torch.long)
        images = self.decode(images, self.deterministic_steps()[1:])  # already float
        for name, idx in self.split_indices(bunch.target.tolist()).items():
            setattr(self, f"{name}_set", self.tensor_split(images[idx], labels[idx], train=name == "train"))
