"""Test-only stand-in for a sweep and its trial worker, with nothing heavy imported: `python -m
tests.helpers.sweep_orphan DELAY` starts one multiprocessing child (as loky starts a sweep's workers), prints
the child's pid, and waits for it; the child waits DELAY seconds (a trial not started yet), then calls
a trial through recipes.sweep.sweeper.DieWithSweeper, which prints `watching` and sleeps a minute. A test kills the stand-in sweep and checks that the child ends with it."""

from __future__ import annotations

import multiprocessing
import os
import sys
import time

from recipes.sweep.sweeper import DieWithSweeper


def trial(seconds: float) -> None:
    print("watching", flush=True)
    time.sleep(seconds)


def worker(sweep_pid: int, delay: float) -> None:
    time.sleep(delay)
    DieWithSweeper(trial, sweep_pid)(60.0)


if __name__ == "__main__":
    child = multiprocessing.get_context("spawn").Process(target=worker, args=(os.getpid(), float(sys.argv[1])))
    child.start()
    print(child.pid, flush=True)
    child.join()
