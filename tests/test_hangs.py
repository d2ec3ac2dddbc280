"""No silent hangs: a stopped rank fails a DDP run within strategy.timeout, async trains with one worker
(its own thread pool intact), two nodes of one async worker each finish, and repeated ddp_sim runs end."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import QUIET, REPO, train, train_in_process, train_ok

TINY = ("trainer.max_epochs=1", "callbacks.model_summary=null", "logger=csv", "model.hidden=[32]")


@pytest.mark.slow  # long: runs in CI's slow pass (python -m pytest -m slow)
def test_a_stopped_rank_fails_the_run_within_the_timeout(tmp_path: Path) -> None:
    pid_file = tmp_path / "stopped.pid"
    start = time.perf_counter()
    proc = train(
        tmp_path / "run",
        "trainer=ddp_sim",
        "strategy.timeout=3",
        *TINY,
        "+callbacks.stall._target_=tests.stalled_rank.StalledRank",
        f"+callbacks.stall.pid_file={pid_file}",
        timeout=120,
    )
    seconds = time.perf_counter() - start
    last = proc.stderr.strip().splitlines()[-1]
    assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert last.startswith("error: another rank stopped answering within strategy.timeout=3s"), last
    assert pid_file.is_file(), "rank 1 never reached its first batch"  # it failed in a collective, not at start-up
    stopped = Path(f"/proc/{pid_file.read_text()}/stat")
    assert not stopped.exists() or stopped.read_text().split(") ")[1].startswith("Z"), "the stopped rank lives on"
    assert seconds < 90, seconds  # gloo's default would have waited 30 minutes


def test_bad_timeout_is_refused_in_one_line(tmp_path: Path) -> None:
    proc = train_in_process(tmp_path / "run", "trainer=ddp_sim", "strategy.timeout=0")
    last = proc.stderr.strip().splitlines()[-1]
    assert proc.returncode != 0 and "strategy.timeout=0 must be a positive number of seconds" in last, last


@pytest.mark.slow  # long: runs in CI's slow pass (python -m pytest -m slow)
def test_async_on_one_device_trains_with_one_worker(tmp_path: Path) -> None:
    """Hogwild with trainer.devices=1: one worker with the machine's threads (it used to deadlock in its first
    torch op, forked after the main process had started the OpenMP pool); fork itself is refused."""
    results = train_ok(tmp_path / "run", "strategy=async", *TINY, env={"OMP_NUM_THREADS": "2"}, timeout=180)
    assert (
        results["parallel"]["worker_steps"] == [results["parallel"]["steps"]] and results["metrics"]["test/acc"] > 0.2
    )  # chance: 0.1
    proc = train(tmp_path / "fork", "strategy=async", "strategy.start_method=fork")
    last = proc.stderr.strip().splitlines()[-1]
    assert proc.returncode != 0 and "strategy.start_method='fork'" in last and "'forkserver', 'spawn'" in last, last


@pytest.mark.slow
def test_two_nodes_of_one_async_worker_each_finish(tmp_path: Path) -> None:
    """The README's multi-node launch with trainer.devices=1 (one worker per node) used to hang at 0% CPU."""
    run_dir = tmp_path / "run"
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    command = [
        sys.executable,
        "-m",
        "recipes.train",
        f"hydra.run.dir={run_dir}",
        *QUIET,
        "trainer=ddp_sim",
        "strategy=async",
        "trainer.num_nodes=2",
        "trainer.devices=1",
        *TINY,
    ]
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    nodes = [
        subprocess.Popen(
            command,
            cwd=REPO,
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env={**env, "NODE_RANK": str(rank), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)},
        )
        for rank in (0, 1)
    ]
    try:
        outputs = [node.communicate(timeout=240) for node in nodes]
    finally:
        for node in nodes:
            node.kill()
    for node, (_, err) in zip(nodes, outputs):
        assert node.returncode == 0, err[-3000:]
    par = json.loads((run_dir / "results.json").read_text())["parallel"]
    assert par["world_size"] == 2 and par["nodes"] == 2 and par["node_averages"] >= 1, par


@pytest.mark.slow
def test_repeated_ddp_sim_runs_do_not_hang() -> None:
    """scripts/soak.py: 3 plain ddp_sim runs, each killed as hung after 150 s."""
    proc = subprocess.run(
        [sys.executable, "scripts/soak.py", "--runs", "3", "--timeout", "150", "--strategies", "ddp"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-4000:]
    assert "       ddp     3     3       0     0" in proc.stdout, proc.stdout
