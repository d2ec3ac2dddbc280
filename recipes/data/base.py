"""What every image data module shares: knob validation, the transform pipeline, in-memory decoding,
and loaders whose shuffling is seeded by (seed, epoch), so a resumed run sees the same batches as an
uninterrupted one.

Data that fits in `cache_mb` is decoded and given its deterministic transforms once and served as
whole batches of tensors (recipes/data/splits.py); the training split's random augmentation, and
the normalization after it, run on whole batches on the device (`on_after_batch_transfer`), in
`augment_draws` independent draws per batch.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, DistributedSampler, Sampler
from typing_extensions import override

from recipes.data.splits import Batches, ImageSplit, IndexedSplit, Split, TensorSplit, keep_batch
from recipes.data.transforms import compose, geometry_and_domain, normalization, to_float_image

__all__ = ["DECODE_CHUNK", "ImageDataModule", "as_rows", "batch_loader", "epoch_sampler", "warn_one_step_epochs"]

log = logging.getLogger(__name__)

DECODE_CHUNK = 4096  # images transformed at once when decoding into memory (bounds the peak memory)


class ImageDataModule(pl.LightningDataModule):
    """Base of the image data modules. Subclasses set `native_channels`, `num_classes` and the three
    splits `train_set`, `val_set`, `test_set` (recipes.data.splits.Split) in `setup`, most simply
    with `tensor_split` for data decoded into memory, else `image_split`."""

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
        augment_draws: int = 8,
        cache_mb: float = 2048,
        as_sequence: bool = False,
    ) -> None:
        super().__init__()
        if train_samples is not None and train_samples <= 0:
            raise ValueError(f"data.train_samples={train_samples} must be a positive count or null (all)")
        if not 0 < batch_size <= sys.maxsize:  # above sys.maxsize the DataLoader fails at the first batch
            raise ValueError(
                f"data.batch_size={batch_size} must be a positive integer up to {sys.maxsize} (a batch "
                "larger than the data set is the whole set), e.g. 64"
            )
        if num_workers < 0:
            raise ValueError(f"data.num_workers={num_workers} must be >= 0")
        if image_size is not None and image_size <= 0:
            raise ValueError(f"data.image_size={image_size} must be a positive number of pixels or null")
        if channels not in (1, 3):
            raise ValueError(f"data.channels={channels} must be 1 (grayscale) or 3 (RGB)")
        if augment_draws < 1:
            raise ValueError(
                f"data.augment_draws={augment_draws} must be >= 1 (independent augmentation draws per "
                "batch; 1 = one for the whole batch)"
            )
        if cache_mb < 0:
            raise ValueError(f"data.cache_mb={cache_mb} must be >= 0 (MiB of decoded images held in memory; 0 = none)")
        self.batch_size, self.num_workers, self.shuffle = batch_size, num_workers, shuffle
        self.image_size, self.channels, self.split_seed = image_size, channels, split_seed
        self.train_samples, self.augment_draws, self.cache_mb = train_samples, augment_draws, cache_mb
        self.as_sequence = as_sequence
        self.return_index = False  # set by the builder when the task caches per-sample values
        self.augment = list(augment or [])
        self.shift = dict(shift) if shift else None
        self._normalize = normalization(normalize, channels)  # validated now, not mid-training
        self.train_set: Split | None = None
        self.val_set: Split | None = None
        self.test_set: Split | None = None
        self._training: Split | None = None

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(channels, height, width) of the images the splits hold."""
        side = self.image_size or self.native_size
        return (self.channels, side, side)

    @property
    def input_shape(self) -> tuple[int, ...]:
        """What the net receives: the images, or with `as_sequence` their rows as time steps
        (height, channels x width)."""
        channels, height, width = self.image_shape
        return (height, channels * width) if self.as_sequence else (channels, height, width)

    def pixel_normalization(self) -> tuple[list[float], list[float]] | None:
        """Per-channel (mean, std) the loaders' images are normalized with, or None: what maps them
        back to [0, 1], the pixel units in which attacks measure eps (modules.pixel_model.PixelNormalized)."""
        if not self._normalize:
            return None
        step = self._normalize[0]
        return [float(m) for m in step.mean], [float(s) for s in step.std]

    def deterministic_steps(self) -> list[Callable]:
        """Float conversion, size, channels and domain shift: the same for every split."""
        return [
            to_float_image(),
            *geometry_and_domain(self.native_channels, self.channels, self.image_size, self.shift),
        ]

    def finish(self, train: bool) -> Callable | None:
        """What a split leaves for its batches: augmentation then normalization for training images
        when there is augmentation; None otherwise (normalization is then part of decoding)."""
        return compose([*self.augment, *self._normalize]) if train and self.augment else None

    def fits_in_memory(self, count: int) -> bool:
        """Whether `count` decoded images (float32, input_shape) fit in data.cache_mb."""
        channels, height, width = self.image_shape
        return count * channels * height * width * 4 <= self.cache_mb * 2**20

    def decode(self, images: torch.Tensor, steps: Sequence[Callable] | None = None) -> torch.Tensor:
        """`images` (N x C x H x W, uint8 or float in [0, 1]) through the deterministic steps, in chunks.
        A domain shift's noise is part of the data: it is seeded by split_seed, the same in every run."""
        pipeline = compose(self.deterministic_steps() if steps is None else steps)
        with torch.random.fork_rng():
            torch.manual_seed(self.split_seed)
            chunks = [pipeline(chunk).as_subclass(torch.Tensor) for chunk in images.split(DECODE_CHUNK)]
        return torch.cat(chunks) if chunks else images.float()

    def tensor_split(self, images: torch.Tensor, labels: torch.Tensor, train: bool, base: Any = None) -> TensorSplit:
        """A split of decoded images (the output of `decode`), normalized now unless `finish` does it."""
        finish = self.finish(train)
        if finish is None and self._normalize:
            images = compose(self._normalize)(images)
        return TensorSplit(images.contiguous(), labels.long(), base, finish)

    def image_split(self, base: Any, train: bool) -> ImageSplit:
        """A split read image by image from `base` ((PIL image or tensor, label) pairs); loaders decode
        it into memory once when it fits (`cache_mb`)."""
        finish = self.finish(train)
        steps = [*self.deterministic_steps(), *([] if finish is not None else self._normalize)]
        return ImageSplit(base, compose(steps), finish)

    def limit_train(self, dataset: Split) -> Split:
        """A seeded subset of `train_samples` training samples (few labelled samples of a new domain)."""
        if self.train_samples is None or self.train_samples >= len(dataset):
            return dataset
        generator = torch.Generator().manual_seed(self.split_seed)
        order = torch.randperm(len(dataset), generator=generator)
        return dataset.subset(sorted(order[: self.train_samples].tolist()))

    def train_loader(self, dataset: Split, sampler: Sampler | None = None) -> DataLoader:
        """The training DataLoader of `dataset`; by default an epoch-seeded shard of it per rank."""
        if self.return_index:
            dataset = IndexedSplit(dataset)
        if sampler is None:
            sampler = epoch_sampler(dataset, self.shuffle, self.trainer)
        warn_one_step_epochs(self.batch_size, sampler, self.trainer)
        return self._loader(dataset, sampler)

    def _in_memory(self, split: Split) -> Split:
        """An ImageSplit that fits decoded once (in the configured workers); anything else as it is."""
        if isinstance(split, ImageSplit) and self.fits_in_memory(len(split)):
            return split.decoded(self.num_workers)
        if isinstance(split, IndexedSplit):
            return IndexedSplit(self._in_memory(split.base))
        return split

    def _served_from_memory(self, split: Split) -> bool:
        """Whether `split` is (or, decoded once, will be) served from memory: worker processes would
        only add start-up cost to it, so its loader runs none."""
        base = split.base if isinstance(split, IndexedSplit) else split
        return isinstance(base, TensorSplit) or (isinstance(base, ImageSplit) and self.fits_in_memory(len(base)))

    def loader_workers(self) -> int:
        """The worker processes the training loader runs beside this process (after setup; before it,
        the configured data.num_workers)."""
        if self.train_set is None or not self._served_from_memory(self.train_set):
            return self.num_workers
        return 0

    def _loader(self, dataset: Split | None, sampler: Sampler | None = None) -> DataLoader:
        if dataset is None:
            raise RuntimeError("setup() has not run: call datamodule.setup(stage) first")
        dataset = self._in_memory(dataset)
        workers = 0 if self._served_from_memory(dataset) else self.num_workers
        return batch_loader(dataset, self.batch_size, sampler, workers, self.trainer)

    def training_dataset(self) -> Split:
        """Exactly what the training loader indexes (sample indices refer to it)."""
        if self.train_set is None:
            raise RuntimeError("setup() has not run: call datamodule.setup(stage) first")
        if self._training is None:
            self._training = self.limit_train(self.train_set)
        return self._training

    @override
    def train_dataloader(self) -> DataLoader:
        return self.train_loader(self.training_dataset())

    @override
    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set)

    @override
    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set)

    @override
    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """The training split's augmentation and normalization, on whole batches where they now are
        (the accelerator), in `augment_draws` groups that each draw their own random parameters; then,
        with `as_sequence`, every split's images as rows (a view, no copy for one channel)."""
        finish = self._training.finish if self._training is not None else None
        augment = finish is not None and self.trainer is not None and self.trainer.training
        if not isinstance(batch, (tuple, list)) or not (augment or self.as_sequence):
            return batch  # as it came (a model summary's example input is a bare tensor, already in shape)
        images = batch[0]
        if augment:
            images = torch.cat([finish(group) for group in images.tensor_split(min(self.augment_draws, len(images)))])
        return (as_rows(images) if self.as_sequence else images, *batch[1:])


def as_rows(images: torch.Tensor) -> torch.Tensor:
    """[B, C, H, W] images as [B, H, C*W] sequences: row h is time step h, its channels side by side."""
    batch, channels, height, width = images.shape
    return images.transpose(1, 2).reshape(batch, height, channels * width)


def epoch_sampler(dataset: Any, shuffle: bool, trainer: pl.Trainer | None) -> DistributedSampler:
    """Epoch-seeded shuffling that Lightning advances with set_epoch, so a resumed run sees the same
    batches as an uninterrupted one; under DDP each rank gets its shard (the strategy says how many:
    a pipeline's ranks all share one). Lightning leaves a DistributedSampler as it is."""
    shard = (trainer.distributed_sampler_kwargs if trainer is not None else None) or {"num_replicas": 1, "rank": 0}
    return DistributedSampler(
        dataset,
        num_replicas=shard["num_replicas"],
        rank=shard["rank"],
        shuffle=shuffle,
        seed=int(os.environ.get("PL_GLOBAL_SEED", 0)),
    )


def batch_loader(
    dataset: Split, batch_size: int, sampler: Sampler | None, workers: int, trainer: pl.Trainer | None
) -> DataLoader:
    """A loader of whole batches of `dataset` (one `raw_batch` call each; no sampler: in order)."""
    on_gpu = bool(trainer and trainer.accelerator.__class__.__name__ == "CUDAAccelerator")
    return DataLoader(
        Batches(dataset),
        batch_size=batch_size,
        sampler=sampler,
        collate_fn=keep_batch,
        num_workers=workers,
        persistent_workers=workers > 0,
        pin_memory=on_gpu,  # page-locked batches: Lightning then copies them with non_blocking=True
    )


def warn_one_step_epochs(batch_size: int, sampler: Sampler, trainer: pl.Trainer | None) -> None:
    """A batch larger than what one rank draws in an epoch still trains (the loaders keep the last,
    short batch), but one step per epoch: say so in one line, once (rank 0)."""
    samples = len(sampler) if hasattr(sampler, "__len__") else None
    if samples is None or batch_size <= samples or (trainer is not None and not trainer.is_global_zero):
        return
    log.warning(
        f"data.batch_size={batch_size} is larger than the {samples} training samples each epoch draws"
        f"{' per rank' if trainer is not None and trainer.world_size > 1 else ''}: every epoch is one "
        f"optimizer step; lower data.batch_size (e.g. {max(1, samples // 8)}) for more steps per epoch"
    )
