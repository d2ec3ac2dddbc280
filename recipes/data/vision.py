"""torchvision's own data sets (MNIST, FashionMNIST, KMNIST, CIFAR-10/100) read from `root` in
torchvision's on-disk layout, downloaded there when `download=true` and the network allows."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Subset
from torchvision import datasets
from typing_extensions import override

from recipes.data.base import ImageDataModule
from recipes.data.files import check_idx_pair
from recipes.errors import RecipeError

__all__ = ["KNOWN", "TorchvisionDataModule", "all_images"]

# name -> (channels, side, classes) of the images as torchvision returns them
KNOWN = {
    "MNIST": (1, 28, 10),
    "FashionMNIST": (1, 28, 10),
    "KMNIST": (1, 28, 10),
    "CIFAR10": (3, 32, 10),
    "CIFAR100": (3, 32, 100),
}


class TorchvisionDataModule(ImageDataModule):
    """Train/val split of the official training set (seeded), official test set for testing.

    These data sets hold all their images in one array (`data`), so they are decoded into memory at
    setup with one pass of the deterministic transforms over the whole array, unless they would
    exceed data.cache_mb (e.g. CIFAR resized to 224 px): then they are read image by image."""

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
        """IDX files of the MNIST family (recipes.data.files.check_idx_pair): magic numbers, sizes, images
        and labels of each split agreeing in count (torchvision would index past the shorter one
        mid-training), labels within the classes."""
        if not issubclass(getattr(datasets, self.dataset), datasets.MNIST):
            return
        raw = self.root / self.dataset / "raw"  # torchvision's MNIST.raw_folder
        for prefix in ("train", "t10k"):
            check_idx_pair(raw / f"{prefix}-images-idx3-ubyte", raw / f"{prefix}-labels-idx1-ubyte", self.num_classes)

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
        train_base, val_base = Subset(full_train, train_idx), Subset(full_train, val_idx)
        if not self.fits_in_memory(len(full_train) + len(test)):
            self.train_set = self.image_split(train_base, train=True)
            self.val_set, self.test_set = self.image_split(val_base, train=False), self.image_split(test, train=False)
            return
        images, labels = self.decode(all_images(full_train)), torch.as_tensor(full_train.targets)
        self.train_set = self.tensor_split(images[train_idx], labels[train_idx], train=True, base=train_base)
        self.val_set = self.tensor_split(images[val_idx], labels[val_idx], train=False, base=val_base)
        self.test_set = self.tensor_split(
            self.decode(all_images(test)), torch.as_tensor(test.targets), train=False, base=test
        )


def all_images(dataset: Any) -> torch.Tensor:
    """A torchvision data set's whole image array as N x C x H x W uint8: the MNIST family keeps an
    N x H x W tensor, CIFAR an N x H x W x C array."""
    data = torch.as_tensor(dataset.data)
    return data.unsqueeze(1) if data.dim() == 3 else data.permute(0, 3, 1, 2)
