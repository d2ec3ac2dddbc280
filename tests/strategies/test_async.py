"""strategy=async is asynchronous SGD (Hogwild): 2 CPU workers update one set of shared weights and never
wait for each other while training. One worker is slowed on purpose (tests/helpers/slow_worker.py) to show it."""

from __future__ import annotations

import csv
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.helpers import REPO
from tests.helpers.gpu import skip_without_cuda
from tests.helpers.runs import QUIET, run_module, train, train_in_process, train_ok

SMALL = ("trainer=ddp_sim", "model.hidden=[64]", "callbacks.model_summary=null", "logger=csv", "data.batch_size=32")
PAUSE = 0.05  # seconds the slowed worker sleeps after each batch


def slowed(rank: int, seconds: float = PAUSE) -> tuple[str, ...]:
    return (
        "+callbacks.slow._target_=tests.helpers.slow_worker.SlowWorker",
        f"+callbacks.slow.rank={rank}",
        f"+callbacks.slow.seconds={seconds}",
    )


def epoch0_val_acc(run_dir: Path) -> float:
    """Rank 0's val/acc after its first epoch, from the CSV log."""
    with open(run_dir / "csv" / "metrics.csv", newline="") as file:
        return next(float(r["val/acc"]) for r in csv.DictReader(file) if r["epoch"] == "0" and r["val/acc"])


@pytest.fixture(scope="module")
def rank1_slowed(tmp_path_factory) -> tuple[Path, dict]:
    run_dir = tmp_path_factory.mktemp("async") / "rank1_slowed"
    return run_dir, train_ok(run_dir, "strategy=async", "trainer.max_epochs=2", *SMALL, *slowed(1))


@pytest.mark.slow  # long: runs in CI's slow pass (python -m pytest -m slow)
def test_fast_worker_keeps_stepping_while_the_slow_one_lags(rank1_slowed, tmp_path: Path) -> None:
    run_dir, results = rank1_slowed
    par = results["parallel"]
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert par["strategy"] == "AsyncSGDStrategy" and par["world_size"] == 2 and par["comm_bytes_per_step"] == 0
    # Each worker made all its own steps (2 epochs over its half of the data) on the shared weights.
    assert par["worker_steps"] == [ckpt["global_step"]] * 2 and par["steps"] == 2 * ckpt["global_step"]
    fast, slow = par["worker_steps_at_first_finish"]
    print(f"parallel: {par}")
    # When the fast worker (rank 0) had made all its steps, the slow one was far behind: rank 0 never
    # waited for it per step or per epoch (an epoch barrier would keep slow >= fast / 2 with 2 epochs).
    assert fast == ckpt["global_step"] and fast >= 2 * max(slow, 1), par
    # Rank 0 waited only at the very end, for the slow worker's remaining steps (each >= PAUSE seconds),
    # so its final checkpoint holds every update.
    assert par["final_wait_seconds"] >= 0.9 * PAUSE * (ckpt["global_step"] - slow), par
    assert results["metrics"]["test/acc"] > 0.7
    # The shipped checkpoint is an ordinary one: recipes.evaluate reproduces the numbers exactly.
    out = tmp_path / "eval.json"
    proc = run_module("recipes.evaluate", f"ckpt_path={run_dir / results['checkpoint']}", f"out={out}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(out.read_text())["metrics"] == results["metrics"]


@pytest.mark.slow  # long: runs in CI's slow pass (python -m pytest -m slow)
def test_workers_update_one_shared_set_of_weights(rank1_slowed, tmp_path: Path) -> None:
    """Slow rank 0 instead: the fast rank 1 finishes first, and rank 0's first validation already sees rank
    1's updates (it validates weights trained by far more steps than its own 20 of one epoch)."""
    run_dir = tmp_path / "rank0_slowed"
    results = train_ok(run_dir, "strategy=async", "trainer.max_epochs=2", *SMALL, *slowed(0, 2 * PAUSE))
    steps_per_epoch = results["parallel"]["worker_steps"][0] // 2
    own, other = results["parallel"]["worker_steps_at_first_finish"]
    assert other == 2 * steps_per_epoch and own < steps_per_epoch, results["parallel"]  # rank 1 done before
    # ... rank 0's first validation. Same seed, data and rank-0 shard as the rank-1-slowed run, whose
    # rank 0 validated after about its own steps_per_epoch updates only.
    shared, alone = epoch0_val_acc(run_dir), epoch0_val_acc(rank1_slowed[0])
    print(
        f"rank 0 epoch-0 val/acc: {shared:.4f} with rank 1's updates, {alone:.4f} nearly alone; {results['parallel']}"
    )
    assert shared > alone + 0.05, (shared, alone)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("strategy.sync_every=0", "strategy.sync_every=0 must be an integer >= 1"),
        ("trainer.num_nodes=2", "needs MASTER_ADDR, MASTER_PORT and NODE_RANK"),  # none set: the nodes cannot meet
    ],
)
def test_bad_value_fails_in_one_line(
    tmp_path: Path, override: str, message: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MASTER_PORT", raising=False)
    monkeypatch.delenv("NODE_RANK", raising=False)
    proc = train_in_process(tmp_path / "run", "trainer=ddp_sim", "strategy=async", override, quiet=False)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and message in last, last
    assert not (tmp_path / "run").exists()


@pytest.mark.slow  # long: runs in CI's slow pass (python -m pytest -m slow)
@pytest.mark.parametrize("launcher", ["env", "torchrun"])
def test_two_nodes_average_their_hogwild_weights(tmp_path: Path, launcher: str) -> None:
    """Two simulated nodes (two `recipes.train` processes, node rank 0 and 1, one run dir), each with 2
    Hogwild workers on its own shared weights; the node leaders average every K node updates. Launched by
    hand (NODE_RANK, MASTER_ADDR, MASTER_PORT) or by torchrun --nproc_per_node=1 (its GROUP_RANK)."""
    run_dir, probe, sync_every = tmp_path / "run", tmp_path / "probe", 8
    overrides = [
        f"hydra.run.dir={run_dir}",
        *QUIET,
        "trainer=ddp_sim",
        "strategy=async",
        "trainer.num_nodes=2",
        "trainer.devices=2",
        f"strategy.sync_every={sync_every}",
        "data.train_samples=1024",
        "data.batch_size=16",
        "model.hidden=[64]",
        "trainer.max_epochs=2",
        "logger=csv",
        "callbacks.model_summary=null",
        "+callbacks.probe._target_=tests.helpers.replica_probe.ReplicaProbe",
        f"+callbacks.probe.out_dir={probe}",
        "+callbacks.probe.last_only=true",
    ]
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}

    def command(rank: int) -> tuple[list[str], dict[str, str]]:
        if launcher == "env":
            return [sys.executable, "-m", "recipes.train", *overrides], {
                **env,
                "NODE_RANK": str(rank),
                "MASTER_ADDR": "127.0.0.1",
                "MASTER_PORT": str(port),
            }
        return [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nnodes=2",
            "--nproc_per_node=1",
            f"--node_rank={rank}",
            "--master_addr=127.0.0.1",
            f"--master_port={port}",
            "-m",
            "recipes.train",
            *overrides,
        ], env

    nodes = [
        subprocess.Popen(cmd, cwd=REPO, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=node_env)
        for cmd, node_env in map(command, (0, 1))
    ]
    outputs = [node.communicate(timeout=240) for node in nodes]
    for node, (out, err) in zip(nodes, outputs):
        assert node.returncode == 0, f"{out[-2000:]}\n{err[-3000:]}"
    assert "run_dir:" in outputs[0][0] and "run_dir:" not in outputs[1][0]  # only global rank 0 reports
    results = json.loads((run_dir / "results.json").read_text())
    par = results["parallel"]
    print(f"parallel: {par}; test/acc {results['metrics']['test/acc']:.4f}")
    # 4 workers on disjoint shards of 1024 samples: 256 each, 16 batches of 16 per epoch, 2 epochs.
    assert par["world_size"] == 4 and par["worker_steps"] == [32] * 4 and par["steps"] == 128, par
    # Each node made 64 updates: 64 // 8 = 8 averages during fit, then the final one.
    assert par["node_averages"] == 64 // sync_every + 1, par
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    replicas = {rank: torch.load(probe / f"rank{rank}.pt", weights_only=True) for rank in range(4)}
    names = replicas[0]["param_names"]
    param_bytes = sum(ckpt["state_dict"][name].numel() * 4 for name in names)
    # rank 0 sent the fp32 parameters per average, plus the 4 workers' int64 step counts once.
    assert par["comm_bytes_per_step"] == round((par["node_averages"] * param_bytes + 4 * 8) / par["steps"], 1)
    # Both node leaders (global ranks 0 and 2) ended with the same weights, those of the checkpoint.
    shipped = torch.cat([ckpt["state_dict"][name].flatten() for name in names])
    assert torch.equal(replicas[0]["final_params"], shipped) and torch.equal(replicas[2]["final_params"], shipped)
    assert results["metrics"]["test/acc"] > 0.6, results["metrics"]  # 10 classes: chance is 0.1


@pytest.mark.gpu
@skip_without_cuda  # without CUDA the run is refused earlier, for the missing GPU
def test_gpu_is_refused_with_a_pointer_to_the_cross_node_option(tmp_path: Path) -> None:
    proc = train(tmp_path / "run", "trainer=ddp_sim", "strategy=async", "trainer.accelerator=gpu")
    last = proc.stderr.strip().splitlines()[-1]
    assert proc.returncode != 0 and last.startswith("error: ") and "torchft" in last, proc.stderr[-3000:]


@pytest.mark.slow  # long: runs in CI's slow pass (python -m pytest -m slow)
def test_async_accuracy_is_within_one_point_of_ddp(tmp_path: Path) -> None:
    """Same epochs, same per-process batch: async (one worker slowed) vs synchronous DDP on digits."""
    epochs = "trainer.max_epochs=10"
    sync = train_ok(tmp_path / "ddp", "strategy=ddp", epochs, *SMALL)["metrics"]["test/acc"]
    asgd = train_ok(tmp_path / "async", "strategy=async", epochs, *SMALL, *slowed(1, 0.02))["metrics"]["test/acc"]
    print(f"test/acc ddp={sync:.4f} async={asgd:.4f}")
    assert asgd >= sync - 0.01, (asgd, sync)
