"""No silent hangs: a stopped rank fails a DDP run within strategy.timeout, async trains with one worker
(its own thread pool intact), two nodes of one async worker each finish, repeated ddp_sim runs end, and a
rank whose launcher was killed exits at once instead of waiting a minute for it."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import REPO
from tests.helpers.processes import live, session
from tests.helpers.runs import QUIET, run_python_script, train, train_argv, train_in_process, train_ok, user_env
from tests.helpers.slow_worker import SLOW_STEPS

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
        "+callbacks.stall._target_=tests.helpers.stalled_rank.StalledRank",
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
    proc = run_python_script("scripts/soak.py", "--runs", "3", "--timeout", "150", "--strategies", "ddp")
    assert proc.returncode == 0, proc.stdout[-4000:]
    assert "       ddp     3     3       0     0" in proc.stdout, proc.stdout


# A rank that waits for its launcher (recipes.runtime.guard._outlive_launcher) after the launcher has already died: the
# middle process starts it, waits until it has imported recipes.runtime.guard, and exits without waiting for it.
ORPHAN = """
import os, sys, time
from recipes.runtime import guard
guard.launched_externally = lambda: False  # as for a rank Lightning started (and no Lightning import to wait for)
open(sys.argv[1], "w").close()
while os.path.exists(sys.argv[1]):  # the middle process removes it as it exits
    time.sleep(0.05)
start = time.monotonic()
guard._outlive_launcher(timeout_s=30)
open(sys.argv[2], "w").write(str(time.monotonic() - start))
"""
MIDDLE = """
import os, subprocess, sys, time
subprocess.Popen([sys.executable, "-c", sys.argv[1], sys.argv[2], sys.argv[3]])
while not os.path.exists(sys.argv[2]):
    time.sleep(0.05)
os.remove(sys.argv[2])
"""


def test_a_rank_whose_launcher_is_gone_does_not_wait_for_it(tmp_path: Path) -> None:
    """The wait compares the parent with the one the rank had at start; it read getppid() only when it began
    waiting, after the rank had been re-parented, and so waited out its full timeout (60 s by default)."""
    ready, seconds = tmp_path / "ready", tmp_path / "seconds"
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "LOCAL_RANK", "SLURM_JOB_ID")}
    subprocess.run([sys.executable, "-c", MIDDLE, ORPHAN, str(ready), str(seconds)], cwd=REPO, env=env, timeout=60)
    deadline = time.monotonic() + 60
    while not seconds.is_file() or not seconds.read_text():
        assert time.monotonic() < deadline, "the orphaned rank is still waiting"
        time.sleep(0.1)
    assert float(seconds.read_text()) < 5, seconds.read_text()


@pytest.mark.slow
def test_ddp_ranks_end_soon_after_their_launcher_is_killed(tmp_path: Path) -> None:
    """kill -9 of rank 0 (the launcher) of a ddp_sim run: rank 1 fails its next collective and exits within
    seconds (it used to live 63 s, waiting for a launcher that was already gone)."""
    run_dir = tmp_path / "run"
    env = user_env()
    command = train_argv(run_dir, "callbacks.model_summary=null")
    proc = subprocess.Popen(
        [*command, *SLOW_STEPS, "trainer=ddp_sim", "trainer.max_epochs=20"],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 120
        while not (run_dir / "checkpoints" / "last.ckpt").is_file():
            assert proc.poll() is None and time.monotonic() < deadline, "the run ended before its first epoch end"
            time.sleep(0.1)
        ranks = [pid for pid in session(proc.pid) if pid != proc.pid]
        assert ranks, "no rank 1"
        proc.kill()
        proc.wait()
        killed = time.monotonic()
        while live(ranks) and time.monotonic() - killed < 45:
            time.sleep(0.2)
        assert not live(ranks), f"ranks {live(ranks)} outlived their killed launcher by 45 s"
        assert time.monotonic() - killed < 20, time.monotonic() - killed
    finally:
        for pid in session(proc.pid):
            os.kill(pid, 9)
