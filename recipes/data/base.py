"""What every image data module shares: knob validation, the transform pipeline and loaders whose
shuffling is seeded by (seed, epoch), so a resumed run sees the same batches as an uninterrupted one."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler, Subset

from recipes.data.transforms import compose, geometry_and_domain, normalization, to_float_image


class TransformedDataset(Dataset):
    """Applies `transform` to the image of each (image, label) pair of `base`."""

    def __init__(self, base: Dataset, transform: Callable) -> None:
        self.base, self.transform = base, transform

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> tuple[Any, int]:
        image, label = self.base[index]
        return self.transform(image), label


class IndexedDataset(Dataset):
    """(image, label, index) triples: lets a task cache per-sample values (e.g. teacher logits)."""

    def __init__(self, base: Dataset) -> None:
        self.base = base

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> tuple[Any, Any, int]:
        image, label = self.base[index][:2]
        return image, label, index


class ImageDataModule(pl.LightningDataModule):
    """Base of the image data modules. Subclasses set `native_channels`, `num_classes` and the three
    datasets `train_set`, `val_set`, `test_set` in `setup`."""

    native_channels: int = 1
    native_size: int = 8
    num_classes: int = 0

    def __init__(
        self,
        batch_size: int = 64,
        num_workers: int = 0,
        shuffle: bool = True,
        image_size: int | None = None,
        channels: int = 1,
        normalize: dict[str, Sequence[float]] | None = None,
        augment: Sequence[Callable] | None = None,
        shift: dict[str, Any] | None = None,
        split_seed: int = 0,
        train_samples: int | None = None,
    ) -> None:
        super().__init__()
        if train_samples is not None and train_samples <= 0:
            raise ValueError(f"data.train_samples={train_samples} must be a positive count or null (all)")
        if not 0 < batch_size <= sys.maxsize:  # above sys.maxsize the DataLoader fails at the first batch
            raise ValueError(f"data.batch_size={batch_size} must be a positive integer up to {sys.maxsize} (a batch "
                             "larger than the data set is the whole set), e.g. 64")
        if num_workers < 0:
            raise ValueError(f"data.num_workers={num_workers} must be >= 0")
        if image_size is not None and image_size <= 0:
            raise ValueError(f"data.image_size={image_size} must be a positive number of pixels or null")
        if channels not in (1, 3):
            raise ValueError(f"data.channels={channels} must be 1 (grayscale) or 3 (RGB)")
        self.batch_size, self.num_workers, self.shuffle = batch_size, num_workers, shuffle
        self.image_size, self.channels, self.split_seed = image_size, channels, split_seed
        self.train_samples = train_samples
        self.return_index = False  # set by the builder when the task caches per-sample values
        self.augment = list(augment or [])
        self.shift = dict(shift) if shift else None
        self._normalize = normalization(normalize, channels)  # validated now, not mid-training
        self.train_set: Dataset | None = None
        self.val_set: Dataset | None = None
        self.test_set: Dataset | None = None

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """(channels, height, width) of the images the net receives."""
        side = self.image_size or self.native_size
        return (self.channels, side, side)

    def pixel_normalization(self) -> tuple[list[float], list[float]] | None:
        """Per-channel (mean, std) the loaders' images are normalized with, or None: what maps them
        back to [0, 1], the pixel units in which attacks measure eps (modules.attacks.PixelNormalized)."""
        if not self._normalize:
            return None
        step = self._normalize[0]
        return [float(m) for m in step.mean], [float(s) for s in step.std]

    def deterministic_steps(self) -> list[Callable]:
        """Float conversion, size, channels and domain shift: the same for every split."""
        return [to_float_image(), *geometry_and_domain(self.native_channels, self.channels, self.image_size, self.shift)]

    def transform(self, train: bool) -> Callable:
        """The whole per-sample pipeline of a split: augmentation on training images only."""
        return compose([*self.deterministic_steps(), *(self.augment if train else []), *self._normalize])

    def limit_train(self, dataset: Dataset) -> Dataset:
        """A seeded subset of `train_samples` training samples (few labelled samples of a new domain)."""
        if self.train_samples is None or self.train_samples >= len(dataset):  # type: ignore[arg-type]
            return dataset
        generator = torch.Generator().manual_seed(self.split_seed)
        order = torch.randperm(len(dataset), generator=generator)  # type: ignore[arg-type]
        return Subset(dataset, sorted(order[: self.train_samples].tolist()))

    def train_loader(self, dataset: Dataset, sampler: Sampler | None = None) -> DataLoader:
        """The training DataLoader of `dataset`; by default an epoch-seeded shard of it per rank."""
        if self.return_index:
            dataset = IndexedDataset(dataset)
        if sampler is None:
            # Epoch-seeded shuffling that Lightning advances with set_epoch; under DDP each rank gets
            # its shard (the strategy says how many: a pipeline's ranks all share one). Lightning
            # leaves a DistributedSampler as it is.
            strategy_shard = self.trainer.distributed_sampler_kwargs if self.trainer is not None else None
            shard = strategy_shard or {"num_replicas": 1, "rank": 0}
            sampler = DistributedSampler(
                dataset,
                num_replicas=shard["num_replicas"],
                rank=shard["rank"],
                shuffle=self.shuffle,
                seed=int(os.environ.get("PL_GLOBAL_SEED", 0)),
            )
        return self._loader(dataset, sampler)

    def _loader(self, dataset: Dataset | None, sampler: Sampler | None = None) -> DataLoader:
        if dataset is None:
            raise RuntimeError("setup() has not run: call datamodule.setup(stage) first")
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            sampler=sampler,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            pin_memory=bool(self.trainer and self.trainer.accelerator.__class__.__name__ == "CUDAAccelerator"),
        )

    def training_dataset(self) -> Dataset:
        """Exactly what the training loader indexes (sample indices refer to it)."""
        if self.train_set is None:
            raise RuntimeError("setup() has not run: call datamodule.setup(stage) first")
        return self.limit_train(self.train_set)

    def train_dataloader(self) -> DataLoader:
        return self.train_loader(self.training_dataset())

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set)
