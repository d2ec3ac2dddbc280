"""Under DDP, the structural steps of issue 25 edit both replicas alike: block pruning scores the same
validation batches on every rank (so every rank deletes the same blocks), and the circulant projection
is deterministic; the edited module is wrapped again and the ranks end with the same weights."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.helpers.runs import train_ok

FAST = ("callbacks.model_summary=null", "callbacks.lr_monitor=null", "logger=csv")


@pytest.mark.slow  # two spawned ranks per case: runs in CI's slow pass (python -m pytest -m slow)
@pytest.mark.parametrize(
    ("overrides", "key", "shape"),
    [
        (
            ("compress=[block_prune]", "model.hidden=[64,64,64,64]", "compress.block_prune.epoch=1"),
            None,  # the deleted Linear has no key left
            None,
        ),
        (("recipe=circulant", "model.hidden=[64,64]", "compress.circulant.epoch=1"), "net.3.weight", (4, 4, 16)),
    ],
)
def test_ddp_replicas_are_edited_alike(
    tmp_path: Path, overrides: tuple[str, ...], key: str | None, shape: tuple[int, ...] | None
) -> None:
    probe = (
        "+callbacks.probe._target_=tests.helpers.replica_probe.ReplicaProbe",
        f"+callbacks.probe.out_dir={tmp_path / 'probe'}",
        "+callbacks.probe.last_only=true",
    )
    results = train_ok(tmp_path / "run", *overrides, *FAST, "trainer=ddp_sim", "trainer.max_epochs=3", *probe)
    r0, r1 = (torch.load(tmp_path / "probe" / f"rank{r}.pt") for r in (0, 1))
    assert r0["params"].shape == r1["params"].shape and torch.allclose(r0["params"], r1["params"], atol=1e-6)
    state = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    comp = results["compression"]
    if key is None:
        removed = comp["block_prune_removed"]
        assert len(removed) == 2 and not any(k.startswith(f"net.{removed[0]}.") for k in state)
    else:
        assert tuple(state[key].shape) == shape
    assert comp["params"] < comp["dense_params"] and results["parallel"]["world_size"] == 2
    assert results["metrics"]["test/acc"] > 0.2  # above chance (0.1) after 3 short epochs
