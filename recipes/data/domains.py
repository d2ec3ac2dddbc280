"""Two domains for transfer recipes: an old (source) and a new (target) data module. Training and
validation use the new domain, or a mix of both (`data.mix`, see mixing.py); testing reports both,
so forgetting of the old domain shows next to progress on the new one."""

from __future__ import annotations

import os
from typing import Any

import lightning.pytorch as pl
from torch.utils.data import DataLoader
from typing_extensions import override

from recipes.data.base import ImageDataModule
from recipes.data.mixing import MixingSampler
from recipes.data.splits import ConcatSplit, Split

__all__ = ["TwoDomainDataModule"]


class TwoDomainDataModule(pl.LightningDataModule):
    """`test_domains` names the test sets; recipes report `test/acc_<domain>` for each."""

    test_domains = ("source", "target")

    def __init__(self, source: ImageDataModule, target: ImageDataModule, mix: dict[str, Any] | None = None) -> None:
        super().__init__()
        if tuple(source.input_shape) != tuple(target.input_shape) or source.num_classes != target.num_classes:
            raise ValueError(
                f"data.source gives {source.input_shape} x {source.num_classes} classes but data.target "
                f"{target.input_shape} x {target.num_classes}: match image_size, channels and classes"
            )
        self.source, self.target = source, target
        self.mix = dict(mix) if mix else None
        if self.mix is not None:  # check the knobs now rather than at the first epoch
            MixingSampler(n_old=1, n_new=1, **self.mix)

    input_shape = property(lambda self: self.target.input_shape)
    num_classes = property(lambda self: self.target.num_classes)
    batch_size = property(lambda self: self.target.batch_size)
    augment = property(lambda self: self.target.augment or (self.mix is not None and self.source.augment))

    @property
    def return_index(self) -> bool:
        return self.target.return_index

    @return_index.setter
    def return_index(self, value: bool) -> None:
        self.target.return_index = value

    def pixel_normalization(self) -> tuple[list[float], list[float]] | None:
        """The new domain's normalization (modules.pixel_model.PixelNormalized): its loaders are the ones tested."""
        return self.target.pixel_normalization()

    @override
    def prepare_data(self) -> None:
        self.source.prepare_data()
        self.target.prepare_data()

    @override
    def setup(self, stage: str | None = None) -> None:
        self.source.setup(stage)
        self.target.setup(stage)

    def training_dataset(self) -> Split:
        """What the training loader indexes: the new domain's training set, after the old one's when mixing."""
        if self.mix is None:
            return self.target.training_dataset()
        return ConcatSplit([self.source.training_dataset(), self.target.training_dataset()])

    @override
    def train_dataloader(self) -> DataLoader:
        self.target.trainer = self.trainer  # the target's loader shards by this trainer's ranks
        dataset = self.training_dataset()
        if self.mix is None:
            return self.target.train_loader(dataset)
        old, new = dataset.datasets  # type: ignore[attr-defined]
        sampler = MixingSampler(
            n_old=len(old),
            n_new=len(new),
            **self.mix,
            shuffle=self.target.shuffle,
            seed=int(os.environ.get("PL_GLOBAL_SEED", 0)),
            num_replicas=self.trainer.world_size if self.trainer else 1,
            rank=self.trainer.global_rank if self.trainer else 0,
        )
        return self.target.train_loader(dataset, sampler)

    def loader_workers(self) -> int:
        """The target's training loader's workers (mixing reads both domains' splits as one, from disk)."""
        return self.target.loader_workers() if self.mix is None else self.target.num_workers

    @override
    def val_dataloader(self) -> DataLoader:
        return self.target.val_dataloader()

    @override
    def test_dataloader(self) -> DataLoader:
        return self.target.test_dataloader()

    def domain_test_dataloader(self, domain: str) -> DataLoader:
        return getattr(self, domain).test_dataloader()

    @override
    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """The new domain finishes its own training batches; mixed batches arrive finished (ConcatSplit)."""
        if self.mix is not None:
            return batch
        self.target.trainer = self.trainer
        return self.target.on_after_batch_transfer(batch, dataloader_idx)
