"""SIGTERM ends a run with exit 143 (SLURM's convention) and one line with the resume command; the
last.ckpt it names loads weights-only and `ckpt_path=last` finishes the run. Under DDP every rank ends;
under strategy=async every worker ends before the main process (which holds the run-dir lock) exits,
whichever process gets the signal, and a worker or main process killed outright leaves no worker behind."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.helpers import REPO
from tests.helpers.in_process import run_module_in_process
from tests.helpers.processes import live, parent, session
from tests.helpers.runs import QUIET, run_module, train_argv, user_env
from tests.helpers.slow_worker import SLOW_STEPS


def stop_after_first_epoch(
    run_dir: Path, *overrides: str, signals: tuple[int, ...] = (signal.SIGTERM,), gap: float = 0.05
) -> tuple[int, str, float]:
    """Start a slowed-down run, send `signals` (SIGTERM), `gap` seconds apart, once its first last.ckpt
    exists; (exit status, stderr, seconds from the last signal to the exit)."""
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "recipes.train",
            f"hydra.run.dir={run_dir}",
            *QUIET,
            "callbacks.model_summary=null",
            *SLOW_STEPS,
            *overrides,
        ],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    while not (run_dir / "checkpoints" / "last.ckpt").is_file():
        assert proc.poll() is None and time.monotonic() < deadline, "the run ended before its first epoch end"
        time.sleep(0.1)
    for i, signum in enumerate(signals):
        time.sleep(gap if i else 0.0)
        proc.send_signal(signum)
        sent = time.monotonic()
    _, stderr = proc.communicate(timeout=120)
    return proc.returncode, stderr, time.monotonic() - sent


def assert_stopped(code: int, stderr: str, run_dir: Path, name: str = "SIGTERM", exit_code: int = 143) -> list[str]:
    """Exit 143 (SIGTERM), a last line with the resume command; returns that command's arguments."""
    assert code == exit_code, stderr[-3000:]
    assert "Traceback" not in stderr, stderr[-3000:]
    assert len([line for line in stderr.splitlines() if line.startswith("error:")]) == 1, stderr[-3000:]
    last = stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: stopped by {name} at epoch "), last
    command = shlex.split(last.split("resume with: ", 1)[1])
    assert command[:3] == ["python", "-m", "recipes.train"] and command[-2:] == [
        f"hydra.run.dir={run_dir}",
        "ckpt_path=last",
    ], command
    torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    return command


def test_sigterm_exits_143_and_resumes(run_dir: Path) -> None:
    code, stderr, _ = stop_after_first_epoch(run_dir, "trainer.max_epochs=3")
    command = assert_stopped(code, stderr, run_dir)
    assert not (run_dir / "results.json").exists()
    resumed = [a for a in command[3:] if not a.startswith("+callbacks.slow.")]  # full speed now
    proc = run_module_in_process("recipes.train", *resumed)  # the command as printed, in this process
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((run_dir / "results.json").read_text())
    assert torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["epoch"] == 2
    assert results["metrics"]["test/acc"] > 0.5


def test_ctrl_c_ends_like_sigterm_with_exit_130(run_dir: Path) -> None:
    """SIGINT (Ctrl-C) during training: the same one line and resume command as SIGTERM, exit 130 (the
    shell's 128 + SIGINT), last.ckpt intact."""
    code, stderr, _ = stop_after_first_epoch(run_dir, "trainer.max_epochs=3", signals=(signal.SIGINT,))
    command = assert_stopped(code, stderr, run_dir, "SIGINT", 130)
    assert "+callbacks.slow.seconds=0.1" in command  # the run's own overrides, as SIGTERM's line gives them
    assert not (run_dir / "results.json").exists()


@pytest.mark.slow  # a 6 s batch, on purpose
def test_a_second_ctrl_c_interrupts_a_stuck_batch_with_the_same_line(run_dir: Path) -> None:
    """A batch that does not end (here one that sleeps 6 s): the first Ctrl-C waits for it, a second one
    1.5 s later interrupts it at once, and the run still ends with the SIGINT line and exit 130."""
    stuck = ["callbacks.slow.seconds=6", "trainer.limit_train_batches=1", "trainer.max_epochs=3"]
    code, stderr, after = stop_after_first_epoch(run_dir, *stuck, signals=(signal.SIGINT,) * 2, gap=1.5)
    assert_stopped(code, stderr, run_dir, "SIGINT", 130)
    assert after < 3.0, f"the run ended {after:.1f} s after the second Ctrl-C, not at once"


def test_a_keyboard_interrupt_outside_the_training_loop_counts_as_sigint() -> None:
    """Before on_train_start (set-up, sanity check) Ctrl-C is Python's KeyboardInterrupt, which Lightning
    turns into sys.exit(1): that exit, or the interrupt itself, is a stop by SIGINT; other exits are not."""
    from types import SimpleNamespace

    from recipes.runtime.interrupt import stopped_by

    trainer = SimpleNamespace(callbacks=[], received_sigterm=False)
    try:
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt:
            raise SystemExit(1)  # noqa: B904 - what Lightning's _call_and_handle_interrupt does
    except SystemExit as lightning_exit:
        assert stopped_by(lightning_exit, trainer) == signal.SIGINT
    assert stopped_by(KeyboardInterrupt(), trainer) == signal.SIGINT
    assert stopped_by(SystemExit(1), trainer) is None and stopped_by(ValueError(), trainer) is None


@pytest.mark.slow
def test_sigterm_stops_every_ddp_rank(run_dir: Path) -> None:
    code, stderr, _ = stop_after_first_epoch(run_dir, "trainer=ddp_sim", "trainer.max_epochs=20")
    assert_stopped(code, stderr, run_dir)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
        if f"hydra.run.dir={run_dir}" not in ps:
            break
        time.sleep(0.5)
    else:
        pytest.fail("a DDP rank is still running after the launcher exited")


# strategy=async: both workers slowed down (rank 0 by SLOW_STEPS), so that both still train when the signal comes.
ASYNC = [
    "trainer=ddp_sim",
    "strategy=async",
    "+callbacks.slow1._target_=tests.helpers.slow_worker.SlowWorker",
    "+callbacks.slow1.rank=1",
    "+callbacks.slow1.seconds=0.1",
]


def async_run_at_first_checkpoint(run_dir: Path, stderr: Path, *overrides: str) -> tuple[subprocess.Popen, list[int]]:
    """Start a slowed strategy=async run in its own session; once its first last.ckpt exists, return the
    main process and its two workers' pids (the fork server's children: neither the main process nor its
    direct children, the fork server and the resource tracker)."""
    env = user_env()
    command = train_argv(run_dir, "callbacks.model_summary=null")
    with stderr.open("w") as err:  # a file, not a pipe: a worker left behind would hold a pipe open
        proc = subprocess.Popen(
            [*command, *SLOW_STEPS, *ASYNC, *overrides],
            cwd=REPO,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=err,
            start_new_session=True,
        )
    deadline = time.monotonic() + 120
    while not (run_dir / "checkpoints" / "last.ckpt").is_file():
        assert proc.poll() is None and time.monotonic() < deadline, stderr.read_text()[-3000:]
        time.sleep(0.1)
    workers = [pid for pid in session(proc.pid) if pid != proc.pid and parent(pid) != proc.pid]
    assert len(workers) == 2, workers
    return proc, workers


def assert_nothing_left(proc: subprocess.Popen, workers: list[int], timeout: float = 10) -> None:
    """Every worker has exited by the time the main process has (it held the run-dir lock until then), and
    the run's whole session (fork server, resource tracker) within `timeout` seconds after that."""
    assert not live(workers), f"workers {live(workers)} outlived the main process"
    deadline = time.monotonic() + timeout
    while session(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not session(proc.pid), f"left behind: {session(proc.pid)}"


def end(proc: subprocess.Popen, timeout: float = 60) -> int:
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        raise


@pytest.mark.slow
@pytest.mark.parametrize("target", ["main process", "worker 0", "worker 1", "process group"])
def test_sigterm_stops_every_async_worker(run_dir: Path, tmp_path: Path, target: str) -> None:
    """SIGTERM to the main process (`kill PID`), to one worker, or to the process group (a scheduler's stop):
    exit 143, the one resume line, every worker gone before the main process exits. Sent to the main process,
    the workers used to train on to max_epochs as orphans, rewriting last.ckpt beside a resumed run."""
    proc, workers = async_run_at_first_checkpoint(run_dir, tmp_path / "stderr", "trainer.max_epochs=4")
    if target == "main process":
        proc.send_signal(signal.SIGTERM)
    elif target == "process group":
        os.killpg(proc.pid, signal.SIGTERM)
    else:
        os.kill(workers[int(target[-1])], signal.SIGTERM)
    code = end(proc)
    stderr = (tmp_path / "stderr").read_text()
    command = assert_stopped(code, stderr, run_dir)
    assert sum(line.startswith("error:") for line in stderr.splitlines()) == 1, stderr[-3000:]
    assert_nothing_left(proc, workers)
    if target != "main process":
        return
    written = (run_dir / "checkpoints" / "last.ckpt").stat().st_mtime_ns
    time.sleep(1)  # an orphaned worker would have written its next epoch's last.ckpt by now
    assert (run_dir / "checkpoints" / "last.ckpt").stat().st_mtime_ns == written
    resumed = [a for a in command[3:] if not a.startswith(("+callbacks.slow", "+callbacks.slow1"))]
    proc = run_module("recipes.train", *resumed, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["epoch"] == 3
    assert json.loads((run_dir / "results.json").read_text())["metrics"]["test/acc"] > 0.5


@pytest.mark.slow
def test_a_killed_async_worker_ends_the_run_in_one_line(run_dir: Path, tmp_path: Path) -> None:
    """kill -9 of a worker: exit 1 and one line naming it (it used to be a ProcessExitedException traceback),
    the other worker stopped, nothing left behind."""
    proc, workers = async_run_at_first_checkpoint(run_dir, tmp_path / "stderr", "trainer.max_epochs=20")
    os.kill(workers[1], signal.SIGKILL)
    code = end(proc)
    stderr = (tmp_path / "stderr").read_text()
    assert code == 1 and "Traceback" not in stderr, stderr[-3000:]
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0] == stderr.strip().splitlines()[-1], stderr[-3000:]
    assert errors[0].startswith(f"error: async worker 1 (pid {workers[1]}) was killed by SIGKILL"), errors[0]
    assert errors[0].endswith(f"hydra.run.dir={run_dir} ckpt_path=last"), errors[0]
    assert_nothing_left(proc, workers)


@pytest.mark.slow
def test_a_killed_async_main_process_leaves_no_worker(run_dir: Path, tmp_path: Path) -> None:
    """kill -9 of the main process (nothing can run in it): each worker notices within a fraction of a
    second and stops at its next batch end, instead of training on to max_epochs."""
    proc, workers = async_run_at_first_checkpoint(run_dir, tmp_path / "stderr", "trainer.max_epochs=20")
    proc.kill()
    end(proc)
    deadline = time.monotonic() + 10
    while live(workers) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not live(workers), f"workers {live(workers)} outlived the killed main process"
    assert_nothing_left(proc, workers)
