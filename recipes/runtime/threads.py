"""How many intra-op threads each process of a run uses (the `threads` knob): the CPUs this process may
actually use (affinity, a cgroup quota, SLURM), shared among the run's local processes and their loader
workers, and one thread for a net whose forward per batch is tiny. torch's own default (every core of the
machine) stalls on a loaded machine: the quick start fitted in 17-20 s with it and in 1.6-2.5 s with one
thread while two other jobs ran on its 2 cores (docs/parallel.md#threads).

A user's OMP_NUM_THREADS wins over `threads=auto`. Lightning sets OMP_NUM_THREADS itself in its DDP ranks
and workers when it is unset, so what the user set is recorded when `recipes` is first imported
(`record_user_omp`, before Lightning runs), in USER_OMP_ENV, which a rank that Lightning launched inherits."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from pathlib import Path

__all__ = [
    "CGROUP_V1",
    "CGROUP_V2",
    "SPIN_COUNT",
    "TINY_FLOPS",
    "USER_OMP_ENV",
    "available_cpus",
    "choose_threads",
    "record_user_omp",
    "set_spin_count",
    "user_omp_threads",
]

# A cgroup's CPU quota: v2 "<quota> <period>" (or "max <period>"), v1 the two files below (quota -1: none).
CGROUP_V2 = Path("/sys/fs/cgroup/cpu.max")
CGROUP_V1 = (Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us"), Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us"))
# Below this many FLOPs per forward of one batch, intra-op threading costs more than it saves (its
# wake-ups dominate), and under load a waiting thread stalls the step: such a net gets 1 thread.
TINY_FLOPS = 100e6
# Spins of an idle libgomp (torch's OpenMP) thread before it sleeps; libgomp's own default is 300000,
# which on a busy machine keeps waiting threads on the cores the thread with work needs. 100000 still
# bridges the gap between two ops of a step (docs/parallel.md#threads has the measurement).
SPIN_COUNT = 100000
# "<pid>:<value>": the OMP_NUM_THREADS the user gave the run (empty: none), recorded by process <pid>.
USER_OMP_ENV = "RECIPES_USER_OMP_NUM_THREADS"


def _cgroup_cpus() -> float | None:
    """The cgroup's CPU quota in CPUs (e.g. 1.5), or None without one."""
    try:
        quota, period = CGROUP_V2.read_text().split()[:2]
    except (OSError, ValueError):
        try:
            quota, period = (path.read_text().strip() for path in CGROUP_V1)
        except (OSError, ValueError):
            return None
    if quota in ("max", "-1"):
        return None
    try:
        return int(quota) / int(period)
    except (ValueError, ZeroDivisionError):
        return None


def available_cpus(env: Mapping[str, str] | None = None) -> int:
    """The CPUs this process may use: the fewest of its affinity mask, its cgroup quota (rounded up: a
    quota of 1.5 runs 2 threads at 75%) and SLURM_CPUS_PER_TASK."""
    env = os.environ if env is None else env
    counts = [len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1]
    quota = _cgroup_cpus()
    if quota is not None:
        counts.append(math.ceil(quota))
    slurm = env.get("SLURM_CPUS_PER_TASK", "")
    if slurm.isdigit() and int(slurm) > 0:
        counts.append(int(slurm))
    return max(1, min(counts))


def record_user_omp(env: dict[str, str] | None = None) -> None:
    """Record the user's OMP_NUM_THREADS, unless inherited from the recipes process that launched this one
    as a Lightning rank (its parent, and LOCAL_RANK set): that record is the user's, not what Lightning set."""
    env = os.environ if env is None else env
    pid, _, _ = env.get(USER_OMP_ENV, "").partition(":")
    if pid == str(os.getpid()) or (pid == str(os.getppid()) and "LOCAL_RANK" in env):
        return
    env[USER_OMP_ENV] = f"{os.getpid()}:{env.get('OMP_NUM_THREADS', '')}"


def user_omp_threads(env: Mapping[str, str] | None = None) -> str | None:
    """The OMP_NUM_THREADS the user set for this run, or None."""
    env = os.environ if env is None else env
    if USER_OMP_ENV in env:
        value = env[USER_OMP_ENV].partition(":")[2]
    else:
        value = env.get("OMP_NUM_THREADS", "")
    return value or None


def choose_threads(
    threads: int | str,
    cpus: int,
    local_processes: int = 1,
    loader_workers: int = 0,
    flops_per_batch: float | None = None,
    user_omp: str | None = None,
) -> tuple[int, str]:
    """(threads per process, why): `threads=N` is N; with `auto`, the user's OMP_NUM_THREADS, else 1 for
    a tiny forward (below TINY_FLOPS per batch), else the CPUs shared among the local processes and
    each one's loader workers."""
    if threads != "auto":
        return int(threads), f"threads={threads}"
    if user_omp is not None and user_omp.isdigit() and int(user_omp) > 0:
        return int(user_omp), f"OMP_NUM_THREADS={user_omp}"
    if flops_per_batch is not None and flops_per_batch < TINY_FLOPS:
        mflops, limit = flops_per_batch / 1e6, TINY_FLOPS / 1e6
        return 1, f"auto: the net's forward is {mflops:.1f} MFLOP per batch, below {limit:.0f}"
    share = max(1, cpus // (local_processes * (1 + loader_workers)))
    return share, f"auto: {cpus} CPUs / ({local_processes} local processes x (1 + {loader_workers} loader workers))"


def set_spin_count(env: dict[str, str] | None = None) -> None:
    """GOMP_SPINCOUNT=SPIN_COUNT, unless the user tuned OpenMP (OMP_NUM_THREADS, OMP_WAIT_POLICY or
    GOMP_SPINCOUNT set). libgomp reads it once, when torch loads it: call before torch is imported."""
    env = os.environ if env is None else env
    if user_omp_threads(env) is None and "OMP_WAIT_POLICY" not in env and "GOMP_SPINCOUNT" not in env:
        env["GOMP_SPINCOUNT"] = str(SPIN_COUNT)
