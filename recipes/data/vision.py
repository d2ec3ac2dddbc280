"""torchvision's own data sets (MNIST, FashionMNIST, KMNIST, CIFAR-10/100) read from `root` in
torchvision's on-disk layout, downloaded there when `download=true` and the network allows."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Subset
from torchvision import datasets
from typing_extensions import override

from recipes.data.base import ImageDataModule, TransformedDataset
from recipes.data.files import check_idx_pair
from recipes.errors import RecipeError

# name -> (channels, side, classes) of the images as torchvision returns them
KNOWN = {
    "MNIST": (1, 28, 10),
    "FashionMNIST": (1, 28, 10),
    "KMNIST": (1, 28, 10),
    "CIFAR10": (3, 32, 10),
    "CIFAR100": (3, 32, 100),
}


class TorchvisionDataModule(ImageDataModule):
    """Train/val split of the official training set (seeded), official test set for testing."""

    def __init__(
        self, dataset: str, root: str, download: bool = False, val_fraction: float = 0.1, **common: Any
    ) -> None:
        if dataset not in KNOWN:
            raise ValueError(f"data.dataset={dataset!r} is not supported: choose one of {', '.join(KNOWN)}")
        self.native_channels, self.native_size, self.num_classes = KNOWN[dataset]
        common.setdefault("channels", self.native_channels)
        super().__init__(**common)
        if not 0 < val_fraction < 1:
            raise ValueError(f"data.val_fraction={val_fraction} must be in (0, 1)")
        self.dataset, self.root, self.download, self.val_fraction = dataset, Path(root), download, val_fraction
        if not download and (not self.root.is_dir() or not any(self.root.iterdir())):
            raise RecipeError(
                f"data.root={root} is missing or empty: put the {dataset} files there "
                f"(torchvision's layout) or pass data.download=true"
            )
        if not download:
            self._check_files()  # after a download, setup checks them

    def _check_files(self) -> None:
        """IDX headers of the MNIST family: images and labels of each split must agree in count
        (torchvision would index past the shorter one mid-training)."""
        if not issubclass(getattr(datasets, self.dataset), datasets.MNIST):
            return
        raw = self.root / self.dataset / "raw"  # torchvision's MNIST.raw_folder
        for prefix in ("train", "t10k"):
            check_idx_pair(raw / f"{prefix}-images-idx3-ubyte", raw / f"{prefix}-labels-idx1-ubyte")

    def _open(self, train: bool, download: bool = False) -> Any:
        cls = getattr(datasets, self.dataset)
        try:
            return cls(str(self.root), train=train, download=download)
        except (RuntimeError, OSError, ValueError) as err:
            action = "download" if download else "read"
            hint = "check the network or put the files there yourself" if download else "pass data.download=true"
            raise RecipeError(f"could not {action} {self.dataset} in data.root={self.root}: {err} ({hint})") from None

    @override
    def prepare_data(self) -> None:
        if self.download:
            self._open(train=True, download=True)
            self._open(train=False, download=True)

    @override
    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        self._check_files()
        full_train, test = self._open(train=True), self._open(train=False)
        generator = torch.Generator().manual_seed(self.split_seed)
        order = torch.randperm(len(full_train), generator=generator).tolist()
        n_val = max(1, round(self.val_fraction * len(full_train)))
        train_idx, val_idx = sorted(order[n_val:]), sorted(order[:n_val])
        self.train_set = TransformedDataset(Subset(full_train, train_idx), self.transform(train=True))
        self.val_set = TransformedDataset(Subset(full_train, val_idx), self.transform(train=False))
        self.test_set = TransformedDataset(test, self.transform(train=False))
