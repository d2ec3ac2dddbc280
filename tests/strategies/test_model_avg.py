"""Model averaging really is periodic: through `python -m recipes.train trainer=ddp_sim
strategy=model_avg`, the replicas drift apart between averaging points and are equal right after each
one (parameters and BatchNorm statistics), the checkpoint holds the average of the replicas, and the
bytes sent per step, measured, are ~period times fewer than DDP's."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.helpers.runs import train_in_process, train_ok

TINY = (
    "data.shuffle=false",
    "data.batch_size=32",
    "model.hidden=[64]",
    "model.batch_norm=true",
    "callbacks.model_summary=null",
    "logger=csv",
    "trainer=ddp_sim",
)


def probe(out: Path) -> tuple[str, str]:
    return "+callbacks.probe._target_=tests.helpers.replica_probe.ReplicaProbe", f"+callbacks.probe.out_dir={out}"


@pytest.mark.slow  # long: runs in CI's slow pass (python -m pytest -m slow)
def test_replicas_drift_between_averages_and_agree_after_each(tmp_path: Path) -> None:
    period, warmup = 3, 2  # 512 samples / (2 ranks x 32) = 8 steps per epoch, 16 in all
    run = tmp_path / "avg"
    results = train_ok(
        run,
        *TINY,
        "strategy=model_avg",
        f"strategy.period={period}",
        f"strategy.warmup_steps={warmup}",
        "data.train_samples=512",
        "trainer.max_epochs=2",
        *probe(tmp_path / "probe"),
    )
    assert results["parallel"]["strategy"] == "ModelAveragingStrategy"  # strategy=model_avg beats ddp_sim's ddp
    r0, r1 = (torch.load(tmp_path / "probe" / f"rank{r}.pt") for r in (0, 1))
    assert r0["steps"] == r1["steps"] == list(range(1, 17))
    averaged = [s for s in r0["steps"] if s > warmup and (s - warmup) % period == 0]
    assert averaged == [5, 8, 11, 14]
    for i, step in enumerate(r0["steps"]):
        params = (r0["params"][i] - r1["params"][i]).abs().max().item()
        buffers = (r0["buffers"][i] - r1["buffers"][i]).abs().max().item()
        if step in averaged:
            assert params < 1e-6 and buffers < 1e-6, (step, params, buffers)
        elif step <= warmup:  # synchronous DDP: same gradients, own BatchNorm statistics
            assert params < 1e-6 < buffers, (step, params, buffers)
        else:  # local steps: no gradient communication, the replicas drift
            assert params > 1e-5 and buffers > 1e-5, (step, params, buffers)
    # Step 16 ends the run off the schedule: the checkpoint holds the mean of the two replicas.
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 16
    for key in ("params", "buffers"):
        saved = torch.cat([ckpt["state_dict"][n].flatten() for n in r0[f"{key[:-1]}_names"]])
        torch.testing.assert_close(saved, (r0[key][-1] + r1[key][-1]) / 2, atol=1e-6, rtol=0)
        assert not torch.allclose(saved, r0[key][-1], atol=1e-5, rtol=0)
    # Bytes, as counted by the strategy: 2 warm-up gradient all-reduces, 5 averagings (4 scheduled,
    # 1 before the final checkpoint) of parameters + buffers, float32.
    n_params, n_buffers = r0["params"].shape[1], r0["buffers"].shape[1]
    assert results["parallel"]["comm_bytes_per_step"] == (2 * n_params + 5 * (n_params + n_buffers)) * 4 / 16
    assert results["metrics"]["test/acc"] > 0.2


@pytest.mark.slow  # long: runs in CI's slow pass (python -m pytest -m slow)
def test_model_avg_sends_period_times_fewer_bytes_than_ddp(tmp_path: Path) -> None:
    period = 4  # 256 samples / (2 ranks x 32) = 4 steps per epoch: every epoch ends on an average
    same = (*TINY, "data.train_samples=256", "trainer.max_epochs=2")
    ddp = train_ok(tmp_path / "ddp", *same, "strategy=ddp")["parallel"]
    avg = train_ok(tmp_path / "avg", *same, "strategy=model_avg", f"strategy.period={period}")["parallel"]
    assert ddp["steps"] == avg["steps"] == 8 and ddp["strategy"] == "DDPStrategy"
    ratio = ddp["comm_bytes_per_step"] / avg["comm_bytes_per_step"]
    # model_avg also averages the BatchNorm statistics (128 floats next to 4938 parameters)
    assert period * 0.95 < ratio <= period, ratio


@pytest.mark.parametrize("period", ["0"])
def test_bad_period_is_one_line_error(tmp_path: Path, period: str) -> None:
    proc = train_in_process(tmp_path / "run", "trainer=ddp_sim", "strategy=model_avg", f"strategy.period={period}")
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and f"strategy.period={period}" in last and "Traceback" not in proc.stderr, last
