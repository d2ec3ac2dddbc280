"""MixingSampler's stream: each sample once per epoch, new samples spread evenly (over the whole
stream or its tail), the new-sample share, seeding, DDP sharding and config errors."""

from __future__ import annotations

import math

import pytest
import torch
from torch.utils.data import ConcatDataset, DataLoader, TensorDataset

from recipes.data.mixing import MixingSampler


def new_positions(stream: list[int], n_old: int) -> list[int]:
    """Where in the stream the new samples sit."""
    return [i for i, index in enumerate(stream) if index >= n_old]


def assert_spread(positions: list[int], start: int, end: int) -> None:
    """`positions` evenly spread over [start, end): no gap, lead-in or lead-out above ceil(w/m) + 1."""
    bound = math.ceil((end - start) / len(positions)) + 1
    assert start <= positions[0] < start + bound
    assert end - bound <= positions[-1] < end
    assert max([b - a for a, b in zip(positions, positions[1:])], default=0) <= bound


@pytest.mark.parametrize("mode", ["uniform", "tail"])
@pytest.mark.parametrize("shuffle", [True, False])
def test_each_sample_once_per_epoch(mode: str, shuffle: bool) -> None:
    sampler = MixingSampler(50, 13, mode=mode, shuffle=shuffle)
    for epoch in range(3):
        sampler.set_epoch(epoch)
        assert sorted(sampler) == list(range(63))
        assert len(sampler) == 63


@pytest.mark.parametrize(("n_old", "n_new"), [(100, 7), (100, 33), (10, 40), (1, 1), (0, 5), (97, 96)])
def test_uniform_spreads_new_samples_over_the_stream(n_old: int, n_new: int) -> None:
    stream = list(MixingSampler(n_old, n_new, mode="uniform", seed=3))
    positions = new_positions(stream, n_old)
    assert len(positions) == n_new
    assert_spread(positions, 0, n_old + n_new)


@pytest.mark.parametrize(
    ("n_old", "n_new", "tail_window", "window"),
    [
        (100, 5, 20, 20),  # int: positions
        (75, 5, 0.25, 20),  # float: fraction of the 80-long stream
        (100, 10, 4, 10),  # smaller than n_new: grown to n_new
        (10, 5, 1000, 15),  # longer than the stream: the whole stream
    ],
)
def test_tail_puts_new_samples_in_the_final_window(n_old: int, n_new: int, tail_window: float, window: int) -> None:
    sampler = MixingSampler(n_old, n_new, mode="tail", tail_window=tail_window)
    length = n_old + n_new
    for epoch in range(2):
        sampler.set_epoch(epoch)
        positions = new_positions(list(sampler), n_old)
        assert len(positions) == n_new
        assert positions[0] >= length - window  # only old samples before the window
        assert_spread(positions, length - window, length)
    if window == n_new:
        assert positions == list(range(length - n_new, length))


@pytest.mark.parametrize(("n_new", "ratio"), [(20, 0.5), (20, 0.2), (7, 0.3), (33, 0.75)])
def test_ratio_sets_the_new_share(n_new: int, ratio: float) -> None:
    n_old = 1000
    sampler = MixingSampler(n_old, n_new, ratio=ratio, seed=5)
    streams = []
    for epoch in range(3):
        sampler.set_epoch(epoch)
        stream = list(sampler)
        old = [i for i in stream if i < n_old]
        assert abs(n_new - ratio * len(stream)) <= 1
        assert len(set(old)) == len(old)
        assert sorted(i for i in stream if i >= n_old) == list(range(n_old, n_old + n_new))
        streams.append(stream)
    old_subsets = [frozenset(i for i in s if i < n_old) for s in streams]
    assert len(set(old_subsets)) == 3
    assert len({tuple(s) for s in streams}) == 3


def test_ratio_beyond_the_old_data_uses_all_old_samples() -> None:
    stream = list(MixingSampler(10, 20, ratio=0.1))
    assert sorted(stream) == list(range(30))


def test_unshuffled_ratio_rotates_through_the_old_data() -> None:
    sampler = MixingSampler(30, 10, ratio=0.5, shuffle=False)  # 10 old samples an epoch
    seen = []
    for epoch in range(3):
        sampler.set_epoch(epoch)
        seen += [i for i in sampler if i < 30]
    assert sorted(seen) == list(range(30))


def test_same_seed_and_epoch_give_the_same_stream() -> None:
    a, b, c = (MixingSampler(200, 30, ratio=0.4, seed=s) for s in (7, 7, 8))
    for sampler in (a, b, c):
        sampler.set_epoch(4)
    assert list(a) == list(b)
    assert list(a) != list(c)


@pytest.mark.parametrize("mode", ["uniform", "tail"])
def test_ddp_ranks_interleave_into_the_global_stream(mode: str) -> None:
    n_old, n_new, batch = 40, 11, 4  # 51 samples: one padded position
    glob = MixingSampler(n_old, n_new, mode=mode, seed=2)
    ranks = [MixingSampler(n_old, n_new, mode=mode, seed=2, num_replicas=2, rank=r) for r in range(2)]
    for sampler in (glob, *ranks):
        sampler.set_epoch(1)
    stream = list(glob)
    padded = stream + stream[:1]
    assert [list(s) for s in ranks] == [padded[0::2], padded[1::2]]
    assert len(ranks[0]) == len(ranks[1]) == 26

    indices = ConcatDataset([TensorDataset(torch.arange(n_old)), TensorDataset(n_old + torch.arange(n_new))])
    loaders = [DataLoader(indices, batch_size=batch, sampler=s) for s in ranks]
    for step, ((b0,), (b1,)) in enumerate(zip(*loaders)):
        # The global batch of 2 * batch, as one process would see it, dealt alternately to the ranks.
        assert torch.stack([b0, b1], dim=1).flatten().tolist() == padded[2 * batch * step : 2 * batch * (step + 1)]


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        ({"ratio": 0.0}, "data.mix.ratio=0.0"),
        ({"ratio": 1.0}, "data.mix.ratio=1.0"),
        ({"ratio": -0.5}, "data.mix.ratio=-0.5"),
        ({"mode": "head"}, "data.mix.mode=head"),
        ({"mode": "tail", "tail_window": 0}, "data.mix.tail_window=0"),
        ({"mode": "tail", "tail_window": -0.1}, "data.mix.tail_window=-0.1"),
        ({"mode": "tail", "tail_window": 1.5}, "data.mix.tail_window=1.5"),
    ],
)
def test_bad_values_name_the_key(kwargs: dict, key: str) -> None:
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        MixingSampler(10, 5, **kwargs)


def test_empty_new_data_is_an_error() -> None:
    with pytest.raises(ValueError, match="new data set"):
        MixingSampler(10, 0)
