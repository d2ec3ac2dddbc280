"""SIGTERM ends a run with exit 143 (SLURM's convention) and one line with the resume command; the
last.ckpt it names loads weights-only and `ckpt_path=last` finishes the run. Under DDP every rank ends."""

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

from tests.conftest import QUIET, REPO, run_module_in_process

SLOW_STEPS = [
    "+callbacks.slow._target_=tests.slow_worker.SlowWorker",
    "+callbacks.slow.rank=0",
    "+callbacks.slow.seconds=0.1",
    "trainer.limit_train_batches=10",
    "trainer.limit_val_batches=2",
]


def stop_after_first_epoch(run_dir: Path, *overrides: str) -> tuple[int, str]:
    """Start a slowed-down run, send SIGTERM once its first last.ckpt exists; (exit status, stderr)."""
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
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    return proc.returncode, stderr


def assert_stopped(code: int, stderr: str, run_dir: Path) -> list[str]:
    """Exit 143, a last line with the resume command; returns that command's arguments."""
    assert code == 143, stderr[-3000:]
    assert "Traceback" not in stderr, stderr[-3000:]
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("error: stopped by SIGTERM at epoch "), last
    command = shlex.split(last.split("resume with: ", 1)[1])
    assert command[:3] == ["python", "-m", "recipes.train"] and command[-2:] == [
        f"hydra.run.dir={run_dir}",
        "ckpt_path=last",
    ], command
    torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    return command


def test_sigterm_exits_143_and_resumes(run_dir: Path) -> None:
    code, stderr = stop_after_first_epoch(run_dir, "trainer.max_epochs=3")
    command = assert_stopped(code, stderr, run_dir)
    assert not (run_dir / "results.json").exists()
    resumed = [a for a in command[3:] if not a.startswith("+callbacks.slow.")]  # full speed now
    proc = run_module_in_process("recipes.train", *resumed)  # the command as printed, in this process
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((run_dir / "results.json").read_text())
    assert torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["epoch"] == 2
    assert results["metrics"]["test/acc"] > 0.5


@pytest.mark.slow
def test_sigterm_stops_every_ddp_rank(run_dir: Path) -> None:
    code, stderr = stop_after_first_epoch(run_dir, "trainer=ddp_sim", "trainer.max_epochs=20")
    assert_stopped(code, stderr, run_dir)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
        if f"hydra.run.dir={run_dir}" not in ps:
            break
        time.sleep(0.5)
    else:
        pytest.fail("a DDP rank is still running after the launcher exited")
