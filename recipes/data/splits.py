"""The splits a data module serves, and the loaders' view of them.

A split's images are decoded and given their deterministic transforms (float, size, channels, domain
shift; normalization too when nothing random follows) once. What the loaders serve is a whole batch
per index list (`Split.raw_batch`: one tensor indexing for in-memory data, no per-image transform and
no collate), and what is left of the pipeline, the training split's random augmentation and the
normalization after it (`Split.finish`), is applied by the data module to whole batches once they are
on the device (ImageDataModule.on_after_batch_transfer). Indexing a split (`split[i]`) gives one
finished sample, for code that reads samples one by one (a teacher's cache, a GAN's reference set).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch.utils.data import ConcatDataset, DataLoader, Dataset, Subset, default_collate

__all__ = ["Batches", "ConcatSplit", "ImageSplit", "IndexedSplit", "Split", "TensorSplit", "keep_batch"]


class Split(Dataset, ABC):
    """One split of a data module: finished samples by index, raw batches for the loaders."""

    finish: Callable | None  # augmentation then normalization, left for the batch; None: samples are finished

    @abstractmethod
    def raw_batch(self, indices: Sequence[int]) -> tuple[torch.Tensor, ...]:
        """(images, labels) of `indices`, stacked, before `finish`."""

    @abstractmethod
    def subset(self, indices: Sequence[int]) -> Split:
        """The same split restricted to `indices` (in that order)."""

    def finished(self, batch: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        """`batch` with `finish` applied to its images (one random draw for the whole batch)."""
        return batch if self.finish is None else (self.finish(batch[0]), *batch[1:])


class TensorSplit(Split):
    """A split held in memory: `images` (N x C x H x W float32, after the deterministic steps) and
    `labels` (N, int64). `base` is the per-image data set they were decoded from (a Subset keeps the
    split's indices into it)."""

    def __init__(
        self, images: torch.Tensor, labels: torch.Tensor, base: Any = None, finish: Callable | None = None
    ) -> None:
        self.images, self.labels, self.base, self.finish = images, labels, base, finish

    @property
    def tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.images, self.labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image = self.images[index]
        return (self.finish(image) if self.finish is not None else image), self.labels[index]

    def raw_batch(self, indices: Sequence[int]) -> tuple[torch.Tensor, ...]:
        index = torch.as_tensor(indices, dtype=torch.long)  # index_select: several times faster than x[index]
        return torch.index_select(self.images, 0, index), torch.index_select(self.labels, 0, index)

    def subset(self, indices: Sequence[int]) -> TensorSplit:
        index = torch.as_tensor(indices, dtype=torch.long)
        base = Subset(self.base, list(indices)) if self.base is not None else None
        return TensorSplit(self.images[index], self.labels[index], base, self.finish)


class ImageSplit(Split):
    """A split read image by image from `base` ((image, label) pairs, e.g. an ImageFolder), `steps`
    (the deterministic transforms) applied per image: data too large to hold in memory. `decoded()`
    reads it once into a TensorSplit when it does fit."""

    def __init__(self, base: Any, steps: Callable, finish: Callable | None = None) -> None:
        self.base, self.steps, self.finish = base, steps, finish
        self._decoded: TensorSplit | None = None

    def __len__(self) -> int:
        return len(self.base)

    def _raw(self, index: int) -> tuple[torch.Tensor, int]:
        image, label = self.base[index][:2]
        return self.steps(image).as_subclass(torch.Tensor), label  # a plain tensor, not a tv_tensors.Image

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image, label = self._raw(index)
        return (self.finish(image) if self.finish is not None else image), label

    def raw_batch(self, indices: Sequence[int]) -> tuple[torch.Tensor, ...]:
        return tuple(default_collate([self._raw(i) for i in indices]))

    def subset(self, indices: Sequence[int]) -> ImageSplit:
        return ImageSplit(Subset(self.base, list(indices)), self.steps, self.finish)

    def decoded(self, num_workers: int = 0) -> TensorSplit:
        """Every image read and transformed once (in `num_workers` DataLoader workers), kept in memory."""
        if self._decoded is None:
            raw = _RawImages(self)
            loader = DataLoader(raw, batch_size=256, num_workers=num_workers)
            images, labels = zip(*loader) if len(raw) else ((torch.zeros(0),), (torch.zeros(0, dtype=torch.long),))
            self._decoded = TensorSplit(torch.cat(images), torch.cat(labels).long(), self.base, self.finish)
        return self._decoded


class _RawImages(Dataset):
    """An ImageSplit's samples before `finish`, one by one (what decoding reads)."""

    def __init__(self, split: ImageSplit) -> None:
        self.split = split

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.split._raw(index)


class IndexedSplit(Split):
    """(image, label, index) samples and batches: lets a task cache per-sample values (teacher logits)."""

    def __init__(self, base: Split) -> None:
        self.base, self.finish = base, base.finish

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int) -> tuple[Any, Any, int]:
        image, label = self.base[index][:2]
        return image, label, index

    def raw_batch(self, indices: Sequence[int]) -> tuple[torch.Tensor, ...]:
        return (*self.base.raw_batch(indices)[:2], torch.as_tensor(indices, dtype=torch.long))

    def subset(self, indices: Sequence[int]) -> Split:
        raise NotImplementedError("index an IndexedSplit's base instead: its indices refer to the base")


class ConcatSplit(ConcatDataset, Split):
    """Splits one after the other (old then new domain, for data mixing). The parts may differ in
    augmentation and normalization, so each part's share of a batch is finished here, on the CPU,
    and the batch leaves finished (`finish` is None)."""

    def __init__(self, parts: Sequence[Split]) -> None:
        super().__init__(parts)
        self.finish = None
        self._starts = torch.tensor([0, *self.cumulative_sizes[:-1]])

    def raw_batch(self, indices: Sequence[int]) -> tuple[torch.Tensor, ...]:
        index = torch.as_tensor(indices, dtype=torch.long)
        part_of = torch.bucketize(index, torch.tensor(self.cumulative_sizes), right=True)
        images: torch.Tensor | None = None
        labels = torch.empty(len(index), dtype=torch.long)
        for part in part_of.unique().tolist():
            rows = (part_of == part).nonzero().squeeze(1)
            split: Split = self.datasets[part]  # type: ignore[assignment]
            x, y = split.finished(split.raw_batch((index[rows] - self._starts[part]).tolist()))[:2]
            if images is None:
                images = x.new_empty((len(index), *x.shape[1:]))
            images[rows], labels[rows] = x, torch.as_tensor(y, dtype=torch.long)
        return images if images is not None else torch.zeros(0), labels

    def subset(self, indices: Sequence[int]) -> Split:
        raise NotImplementedError("subset each part instead")


class Batches(Dataset):
    """What a loader indexes: a whole batch per index list (DataLoader's `__getitems__` path), so
    with `collate_fn=keep_batch` a batch is one `raw_batch` call, not one call and a collate per image."""

    def __init__(self, split: Split) -> None:
        self.split = split

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, ...]:
        return tuple(t[0] for t in self.split.raw_batch([index]))

    def __getitems__(self, indices: list[int]) -> tuple[torch.Tensor, ...]:
        return self.split.raw_batch(indices)


def keep_batch(batch: Any) -> Any:
    """The collate function of `Batches`: the batch is already one (module level: workers pickle it)."""
    return batch
