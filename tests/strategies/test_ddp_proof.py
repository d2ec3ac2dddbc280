"""Synchronous SGD is what `strategy=ddp` does: 2 ranks x batch B reach the same weights as one
process x batch 2B on the same sample order (DistributedSampler interleaves the ranks' shards, so
each global step sees the same 2B samples; a net without BatchNorm; 512 samples, no padding), and only then:
a training split the ranks do not divide is padded, and results.json says by how many samples."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import torch
from torch.utils.data import DataLoader, DistributedSampler

from recipes.data.mixing import MixingSampler
from recipes.stages.results import padded_samples_per_epoch
from tests.helpers.runs import train_ok, train_ok_in_process

SAME_WORK = (
    "data.shuffle=false",
    "data.train_samples=512",
    "trainer.max_epochs=2",
    "model.hidden=[64]",
    "callbacks.model_summary=null",
    "logger=csv",
)


def test_two_ranks_of_batch_b_equal_one_process_of_batch_2b(tmp_path: Path) -> None:
    ddp, single = tmp_path / "ddp", tmp_path / "single"
    ddp_results = train_ok(ddp, "trainer=ddp_sim", "data.batch_size=32", *SAME_WORK)
    single_results = train_ok_in_process(single, "trainer=cpu", "data.batch_size=64", *SAME_WORK)
    a = torch.load(ddp / "checkpoints" / "last.ckpt", weights_only=True)
    b = torch.load(single / "checkpoints" / "last.ckpt", weights_only=True)
    assert a["recipe"]["config"]["trainer"]["devices"] == 2 and b["recipe"]["config"]["trainer"]["devices"] == 1
    assert a["global_step"] == b["global_step"] == 16  # 512 / 64 steps per epoch, 2 epochs
    for name, weight in a["state_dict"].items():
        assert torch.allclose(weight, b["state_dict"][name], atol=1e-5, rtol=0), name
    # and the weights did train: both models are well above chance (0.1) after 16 steps
    assert ddp_results["parallel"]["world_size"] == 2 and single_results["parallel"]["comm_bytes_per_step"] == 0
    assert (
        ddp_results["parallel"]["padded_samples_per_epoch"]
        == single_results["parallel"]["padded_samples_per_epoch"]
        == 0
    )
    assert ddp_results["metrics"]["test/acc"] > 0.3 and single_results["metrics"]["test/acc"] > 0.3


def test_a_split_the_ranks_do_not_divide_is_padded_and_results_say_so(tmp_path: Path) -> None:
    """511 samples on 2 ranks: DistributedSampler repeats 1 sample each epoch (2 x 256 = 512), so the run is not
    one process's with the global batch; results.json's `parallel` section records the 1."""
    results = train_ok(
        tmp_path / "ddp",
        "trainer=ddp_sim",
        "data.batch_size=32",
        *SAME_WORK[:1],
        "data.train_samples=511",
        "trainer.max_epochs=1",
        *SAME_WORK[3:],
    )
    assert results["parallel"]["world_size"] == 2 and results["parallel"]["padded_samples_per_epoch"] == 1


def test_padded_samples_count_every_sampler_the_training_loader_may_have() -> None:
    """torch's DistributedSampler (with and without drop_last) and the data-mixing sampler (no dataset, a
    stream length) on 3 ranks; one replica pads nothing; a trainer without a training loader counts 0."""
    data = list(range(10))

    def padded(*samplers: object) -> int:
        loaders = [DataLoader(data, sampler=s) for s in samplers]
        return padded_samples_per_epoch(SimpleNamespace(train_dataloader=loaders[0] if len(loaders) == 1 else loaders))

    assert padded(DistributedSampler(data, num_replicas=3, rank=0)) == 2  # 3 x 4 = 12 for 10
    assert padded(DistributedSampler(data, num_replicas=3, rank=0, drop_last=True)) == 0  # drops 1 instead
    assert padded(DistributedSampler(data, num_replicas=1, rank=0)) == 0
    mixing = MixingSampler(n_old=6, n_new=5, num_replicas=3)  # a stream of 11: 3 x 4 = 12
    assert padded(mixing) == 1 and padded(mixing, DistributedSampler(data, num_replicas=3, rank=0)) == 3
    assert padded_samples_per_epoch(SimpleNamespace(train_dataloader=None)) == 0
