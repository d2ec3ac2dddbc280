"""The data-module contract: what the recipes read of a data module besides Lightning's own hooks, so
that a new data set is one LightningDataModule that declares these, and the builder checks it does
before sizing a net from it. Protocols, not a base class: ImageDataModule and TwoDomainDataModule
share no base beyond Lightning's, and a user's own module need not derive from either."""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

from torch.utils.data import DataLoader, Dataset

__all__ = ["DomainData", "RecipeData", "TextData"]


@runtime_checkable
class RecipeData(Protocol):
    """A data module a recipe can train on. `input_shape` (what one sample the net receives is shaped:
    [C, H, W] for images, [seq_len] for symbol sequences (TextData), [steps, features] for an image read
    row by row) and `num_classes` size the net and are recorded in every checkpoint; `return_index` is set by the
    builder when the task caches per-sample values (batches then carry each sample's index);
    `training_dataset` is the training split as a dataset, for tasks that pass over it once (a
    teacher's cached logits, a GAN's reference features); `pixel_normalization` is the per-channel
    (mean, std) the loaders normalize with, or None, which attacks need to measure eps in pixels;
    `loader_workers` is the worker processes the training loader runs beside each process, which
    share its CPUs (recipes.assembly.thread_count)."""

    input_shape: tuple[int, ...]
    num_classes: int
    return_index: bool

    def training_dataset(self) -> Dataset: ...

    def pixel_normalization(self) -> tuple[list[float], list[float]] | None: ...

    def loader_workers(self) -> int: ...


@runtime_checkable
class DomainData(Protocol):
    """A data module of two domains (transfer recipes): the test stage also tests on each domain's test
    set and reports `test/<metric>_<domain>`."""

    test_domains: tuple[str, ...]

    def domain_test_dataloader(self, domain: str) -> DataLoader: ...


@runtime_checkable
class TextData(Protocol):
    """A data module of symbol sequences (recipes.data.text): `input_shape` is `(seq_len,)`, `num_classes`
    the vocabulary's size, and `vocab` maps symbols to the indices the net reads (`to_list()`: the symbols
    in index order, plain data for the checkpoint, which records it: recipes.assembly.data_record)."""

    vocab: Any
