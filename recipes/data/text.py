"""Character-level text for language models: the text's symbols (recipes.data.vocabulary) cut into
windows of seq_len + 1, served as (x, y) = (window[:-1], window[1:]), both int64 [B, seq_len].

Each split (train, val, test) is its own piece of text and is cut into non-overlapping windows
(stride seq_len) of its own, so no window crosses a split. The text is read, and the vocabulary
built, when the data module is built: the net is sized from `input_shape` and `num_classes` before
fit, and a bad file or checkpoint is refused before anything trains. Windows live in memory and
are served as whole batches with the image modules' seeded loaders (recipes/data/base.py).
"""

from __future__ import annotations

import logging
import random
import sys
from abc import abstractmethod
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader
from typing_extensions import override

from recipes.data.base import batch_loader, epoch_sampler, warn_one_step_epochs
from recipes.data.splits import IndexedSplit, Split, TensorSplit
from recipes.data.vocabulary import Vocabulary, checkpoint_vocabulary
from recipes.errors import RecipeError

__all__ = ["SPLITS", "PyTextDataModule", "TextDataModule", "TextFileDataModule", "windows"]

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")


class TextDataModule(pl.LightningDataModule):
    """Base of the text data modules: a subclass reads its three pieces of text in `read_splits`
    (called once, at construction) and names what it read in `source`."""

    source: str = "the text"

    def __init__(
        self,
        batch_size: int = 64,
        seq_len: int = 128,
        num_workers: int = 0,
        shuffle: bool = True,
        vocab_from: str | None = None,
        val_fraction: float = 0.1,
        test_fraction: float = 0.1,
    ) -> None:
        super().__init__()
        if not 0 < batch_size <= sys.maxsize:
            raise ValueError(f"data.batch_size={batch_size} must be a positive integer, e.g. 64")
        if seq_len < 2:
            raise ValueError(f"data.seq_len={seq_len} must be >= 2 (symbols per training window), e.g. 128")
        if num_workers < 0:
            raise ValueError(f"data.num_workers={num_workers} must be >= 0")
        if not (0 < val_fraction < 1 and 0 < test_fraction < 1 and val_fraction + test_fraction < 1):
            raise ValueError(
                f"data.val_fraction={val_fraction} and data.test_fraction={test_fraction} must be in (0, 1) "
                "and sum to less than 1"
            )
        self.batch_size, self.seq_len, self.num_workers, self.shuffle = batch_size, seq_len, num_workers, shuffle
        self.val_fraction, self.test_fraction = val_fraction, test_fraction
        self.return_index = False  # set by the builder when the task caches per-sample values
        self.texts = self.read_splits()
        for name in SPLITS:
            if len(self.texts[name]) < seq_len + 1:
                raise ValueError(
                    f"data.seq_len={seq_len} is longer than the {name} split of {self.source} "
                    f"({len(self.texts[name])} symbols; a window is seq_len + 1): lower data.seq_len "
                    f"(at most {max(len(self.texts[name]) - 1, 1)}) or give that split more text"
                )
        self.vocab = self._vocabulary(vocab_from)
        self.train_set: Split | None = None
        self.val_set: Split | None = None
        self.test_set: Split | None = None

    @abstractmethod
    def read_splits(self) -> dict[str, str]:
        """The text of each split ("train", "val", "test"), read once."""

    def _vocabulary(self, vocab_from: str | None) -> Vocabulary:
        """The corpus's own vocabulary, or a checkpoint's (then say, once, how much of the text it lacks)."""
        if vocab_from is None:
            return Vocabulary.of_text("".join(self.texts[name] for name in SPLITS))
        vocab = checkpoint_vocabulary(str(vocab_from))
        unknown = sum(vocab.unknown(self.texts[name]) for name in SPLITS)
        if unknown:
            total = sum(len(self.texts[name]) for name in SPLITS)
            log.warning(
                f"data: {unknown} of {total} symbols of {self.source} are not in the checkpoint's "
                "vocabulary; they read as <unk>"
            )
        return vocab

    @property
    def input_shape(self) -> tuple[int]:
        """(seq_len,): the symbols of one window the net receives."""
        return (self.seq_len,)

    @property
    def num_classes(self) -> int:
        """The symbols a model predicts among."""
        return len(self.vocab)

    def pixel_normalization(self) -> None:
        """Text has no pixels (attacks measure eps in pixels)."""
        return None

    def loader_workers(self) -> int:
        return self.num_workers

    @override
    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        for name in SPLITS:
            x, y = windows(self.vocab.encode(self.texts[name]), self.seq_len)
            setattr(self, f"{name}_set", TensorSplit(x, y))

    def training_dataset(self) -> Split:
        """Exactly what the training loader indexes (sample indices refer to it)."""
        return self._ready(self.train_set)

    @override
    def train_dataloader(self) -> DataLoader:
        dataset = self.training_dataset()
        dataset = IndexedSplit(dataset) if self.return_index else dataset
        sampler = epoch_sampler(dataset, self.shuffle, self.trainer)
        warn_one_step_epochs(self.batch_size, sampler, self.trainer)
        return batch_loader(dataset, self.batch_size, sampler, self.num_workers, self.trainer)

    @override
    def val_dataloader(self) -> DataLoader:
        return batch_loader(self._ready(self.val_set), self.batch_size, None, self.num_workers, self.trainer)

    @override
    def test_dataloader(self) -> DataLoader:
        return batch_loader(self._ready(self.test_set), self.batch_size, None, self.num_workers, self.trainer)

    @staticmethod
    def _ready(split: Split | None) -> Split:
        if split is None:
            raise RuntimeError("setup() has not run: call datamodule.setup(stage) first")
        return split


def windows(ids: torch.Tensor, seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(x, y), each [N, seq_len]: the N = (len - 1) // seq_len windows of seq_len + 1 symbols at stride
    seq_len, x the window's first seq_len symbols and y its last seq_len (x shifted by one)."""
    count = (len(ids) - 1) // seq_len
    span = count * seq_len
    return ids[:span].view(count, seq_len).clone(), ids[1 : span + 1].view(count, seq_len).clone()


class PyTextDataModule(TextDataModule):
    """The help topics of the Python this runs on (pydoc_data.topics: 79 topics, ~465k characters;
    embedded, no download). Split by topic, so no window crosses a split: the topics in a seeded
    order (`split_seed`), then val and test take topics until their share of the characters is as
    close as it gets to val_fraction and test_fraction; a split's topics are joined by a blank line."""

    source = "pydoc_data.topics"

    def __init__(self, split_seed: int = 0, **common: Any) -> None:
        self.split_seed = split_seed
        super().__init__(**common)

    def topic_splits(self) -> dict[str, list[str]]:
        """The topic names of each split, each list sorted."""
        from pydoc_data.topics import topics

        names = sorted(topics)
        random.Random(self.split_seed).shuffle(names)
        total = sum(len(topics[name]) for name in names)
        chosen: dict[str, list[str]] = {}
        for split, fraction in (("val", self.val_fraction), ("test", self.test_fraction)):
            target, size, chosen[split] = fraction * total, 0, []
            for name in list(names):
                if not chosen[split] or abs(size + len(topics[name]) - target) < abs(size - target):
                    chosen[split].append(name)
                    size += len(topics[name])
                    names.remove(name)
        chosen["train"] = names
        return {split: sorted(chosen[split]) for split in SPLITS}

    @override
    def read_splits(self) -> dict[str, str]:
        from pydoc_data.topics import topics

        return {split: "\n\n".join(topics[name] for name in names) for split, names in self.topic_splits().items()}


class TextFileDataModule(TextDataModule):
    """Any UTF-8 text file (`path`), in three contiguous pieces: the first 1 - val_fraction -
    test_fraction of it trains, then val, then test, each cut at a line boundary when one is near."""

    def __init__(self, path: str | None = None, **common: Any) -> None:
        self.path = path
        self.source = str(path)
        super().__init__(**common)

    @override
    def read_splits(self) -> dict[str, str]:
        text = read_utf8(self.path)
        ends = [
            round(len(text) * (1 - self.val_fraction - self.test_fraction)),
            round(len(text) * (1 - self.test_fraction)),
        ]
        slack = max(1, round(len(text) * min(self.val_fraction, self.test_fraction) / 4))
        train_end, val_end = (line_cut(text, end, slack) for end in ends)
        return {"train": text[:train_end], "val": text[train_end:val_end], "test": text[val_end:]}


def read_utf8(path: str | None, key: str = "data.path") -> str:
    """The text of a UTF-8 file, or one line naming the problem (and the first bad byte)."""
    if path is None:
        raise RecipeError(f"{key} is not set: give the text file to train on, e.g. {key}=corpus.txt")
    file = Path(path)
    if not file.is_file():
        what = "is a directory" if file.is_dir() else "does not exist"
        raise RecipeError(f"{key}={path} {what}: give a UTF-8 text file")
    data = file.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise RecipeError(
            f"{key}={path} is not UTF-8: byte {err.start} (0x{data[err.start]:02x}) starts no valid character; "
            "convert the file (e.g. iconv -t UTF-8) or remove that byte"
        ) from None


def line_cut(text: str, at: int, slack: int) -> int:
    """The start of the line nearest to `at`, if within `slack` characters; else `at`."""
    before, after = text.rfind("\n", 0, at) + 1, text.find("\n", at) + 1
    near = [cut for cut in (before, after) if 0 < cut and abs(cut - at) <= slack]
    return min(near, key=lambda cut: abs(cut - at)) if near else at
