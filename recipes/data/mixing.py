"""The index stream for fine-tuning on old + new data: new samples spread evenly through the epoch
(or through its last stretch), so no run of batches is all-new or all-old by chance, and a share of
old samples that rehearses the old task without drowning the new one."""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
from torch.utils.data import DistributedSampler

__all__ = ["MODES", "MixingSampler"]

MODES = ("uniform", "tail")


class MixingSampler(DistributedSampler):
    """Indices into `ConcatDataset([old, new])`: 0..n_old-1 are old samples, n_old.. are new.

    Each epoch uses every new sample and `old_per_epoch` old ones, each exactly once, in an order
    seeded by (seed, epoch) when `shuffle` (Lightning advances the epoch with `set_epoch`).

    ratio: share of new samples in the stream, in (0, 1); None uses all old samples. A ratio that
        needs more old samples than there are uses all of them, so the new share comes out higher.
        Each epoch draws a different old subset (shuffle) or the next contiguous one (no shuffle),
        so over epochs every old sample is rehearsed.
    mode: "uniform" spreads the new samples evenly over the whole stream; "tail" plays old samples
        first and spreads the new ones evenly over the last `tail_window` positions (an int, or a
        float in (0, 1] as a fraction of the stream), grown to at least n_new and cut to the stream.

    It subclasses DistributedSampler (without its constructor) so that Lightning, which replaces any
    other sampler under DDP, leaves it alone. Under DDP, as torch's DistributedSampler: every rank
    builds the same stream, pads it from its start to a multiple of `num_replicas` and takes
    positions rank, rank + num_replicas, ..., so the ranks' batches interleave into the global order.
    """

    def __init__(
        self,
        n_old: int,
        n_new: int,
        mode: str = "uniform",
        ratio: float | None = None,
        tail_window: int | float = 0.25,
        shuffle: bool = True,
        seed: int = 0,
        num_replicas: int = 1,
        rank: int = 0,
    ) -> None:
        if n_new <= 0:
            raise ValueError(f"the new data set has {n_new} samples: fine-tuning needs at least one")
        if mode not in MODES:
            raise ValueError(f"data.mix.mode={mode} must be one of {', '.join(MODES)}")
        if ratio is not None and not 0 < ratio < 1:
            raise ValueError(f"data.mix.ratio={ratio} must be the share of new samples, in (0, 1), or null for all old")
        if tail_window <= 0 or (isinstance(tail_window, float) and tail_window > 1):
            raise ValueError(
                f"data.mix.tail_window={tail_window} must be a positive int (positions) or a float in (0, 1] (fraction)"
            )
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} must be in [0, num_replicas={num_replicas})")
        self.drop_last = False
        self.n_old, self.n_new, self.shuffle, self.seed = n_old, n_new, shuffle, seed
        self.num_replicas, self.rank, self.epoch = num_replicas, rank, 0
        self.old_per_epoch = n_old if ratio is None else min(n_old, round(n_new * (1 - ratio) / ratio))
        self.length = self.old_per_epoch + n_new
        if mode == "uniform":
            window = self.length
        else:
            window = math.ceil(tail_window * self.length) if isinstance(tail_window, float) else int(tail_window)
        self.window = min(max(window, n_new), self.length)
        self.num_samples = math.ceil(self.length / num_replicas)
        self.total_size = self.num_samples * num_replicas

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def stream(self) -> list[int]:
        """This epoch's global stream, unpadded: what a single process iterates."""
        k, m, w = self.old_per_epoch, self.n_new, self.window
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed + self.epoch)
            old = torch.randperm(self.n_old, generator=g)[:k]
            new = torch.randperm(m, generator=g)
        else:
            old = (self.epoch * k + torch.arange(k)) % max(self.n_old, 1)
            new = torch.arange(m)
        # New sample j at floor((j + 1/2) * w / m) within the window: distinct since w >= m, and
        # consecutive ones at most ceil(w / m) apart.
        new_pos = self.length - w + (2 * torch.arange(m) + 1) * w // (2 * m)
        is_new = torch.zeros(self.length, dtype=torch.bool)
        is_new[new_pos] = True
        stream = torch.empty(self.length, dtype=torch.long)
        stream[new_pos] = self.n_old + new
        stream[~is_new] = old
        return stream.tolist()

    def __iter__(self) -> Iterator[int]:
        stream = self.stream()
        padding = self.total_size - self.length
        stream += (stream * math.ceil(padding / self.length))[:padding]
        return iter(stream[self.rank : self.total_size : self.num_replicas])

    def __len__(self) -> int:
        return self.num_samples
