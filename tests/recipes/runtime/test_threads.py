"""The `threads=auto` rule (recipes.runtime.threads): the CPUs a process may use (affinity, a cgroup quota,
SLURM), shared among local processes and loader workers; 1 for a tiny forward; a user's OMP_NUM_THREADS
wins, also in a rank Lightning launched after setting its own; GOMP_SPINCOUNT unless the user tuned OpenMP."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from recipes.runtime import threads
from recipes.runtime.threads import (
    SPIN_COUNT,
    USER_OMP_ENV,
    available_cpus,
    choose_threads,
    record_user_omp,
    set_spin_count,
    user_omp_threads,
)


@pytest.fixture
def machine(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    """8 CPUs in the affinity mask, no cgroup files; returns a setter of cgroup v2/v1 quota files."""
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)))
    monkeypatch.setattr(threads, "CGROUP_V2", tmp_path / "cpu.max")
    monkeypatch.setattr(threads, "CGROUP_V1", (tmp_path / "quota", tmp_path / "period"))

    def cgroup(v2: str | None = None, v1: tuple[str, str] | None = None) -> None:
        if v2 is not None:
            (tmp_path / "cpu.max").write_text(v2 + "\n")
        if v1 is not None:
            (tmp_path / "quota").write_text(v1[0] + "\n")
            (tmp_path / "period").write_text(v1[1] + "\n")

    return cgroup


def test_the_affinity_mask_without_a_quota(machine) -> None:
    assert available_cpus({}) == 8
    machine(v2="max 100000")
    assert available_cpus({}) == 8


def test_a_cgroup_v2_quota_rounds_up(machine) -> None:
    machine(v2="150000 100000")
    assert available_cpus({}) == 2


def test_a_cgroup_v1_quota(machine) -> None:
    machine(v1=("300000", "100000"))
    assert available_cpus({}) == 3
    machine(v1=("-1", "100000"))
    assert available_cpus({}) == 8


def test_slurm_cpus_per_task_and_the_fewest_wins(machine) -> None:
    assert available_cpus({"SLURM_CPUS_PER_TASK": "4"}) == 4
    machine(v2="200000 100000")
    assert available_cpus({"SLURM_CPUS_PER_TASK": "4"}) == 2
    assert available_cpus({"SLURM_CPUS_PER_TASK": "junk"}) == 2


def test_auto_shares_the_cpus_among_processes_and_loader_workers() -> None:
    assert choose_threads("auto", 8)[0] == 8
    assert choose_threads("auto", 8, local_processes=2)[0] == 4
    assert choose_threads("auto", 8, local_processes=2, loader_workers=1)[0] == 2
    count, reason = choose_threads("auto", 2, local_processes=4, loader_workers=2, flops_per_batch=1e9)
    assert count == 1 and "2 CPUs / (4 local processes x (1 + 2 loader workers))" in reason


def test_a_tiny_forward_gets_one_thread() -> None:
    count, reason = choose_threads("auto", 8, flops_per_batch=6.4e6)
    assert count == 1 and "6.4 MFLOP per batch" in reason
    assert choose_threads("auto", 8, flops_per_batch=threads.TINY_FLOPS)[0] == 8


def test_the_users_omp_num_threads_wins_over_auto_and_threads_n_over_both() -> None:
    assert choose_threads("auto", 8, flops_per_batch=1.0, user_omp="3") == (3, "OMP_NUM_THREADS=3")
    assert choose_threads(5, 8, user_omp="3") == (5, "threads=5")
    assert choose_threads("auto", 8, user_omp="junk")[0] == 8


def test_the_users_value_survives_lightning_setting_its_own(monkeypatch: pytest.MonkeyPatch) -> None:
    """The launcher records what the user set; a rank it started (its child, LOCAL_RANK set) keeps that
    record when Lightning has set OMP_NUM_THREADS; an unrelated child (a test's subprocess) records anew."""
    launcher = {"OMP_NUM_THREADS": "2"}
    monkeypatch.setattr(os, "getpid", lambda: 100)
    record_user_omp(launcher)
    assert launcher[USER_OMP_ENV] == "100:2" and user_omp_threads(launcher) == "2"
    unset: dict[str, str] = {}
    record_user_omp(unset)
    monkeypatch.setattr(os, "getpid", lambda: 101)
    monkeypatch.setattr(os, "getppid", lambda: 100)
    rank = {**unset, "LOCAL_RANK": "1", "OMP_NUM_THREADS": "4"}  # Lightning's, not the user's
    record_user_omp(rank)
    assert user_omp_threads(rank) is None
    other = {**launcher, "OMP_NUM_THREADS": "6"}  # no LOCAL_RANK: not a rank Lightning launched
    record_user_omp(other)
    assert other[USER_OMP_ENV] == "101:6" and user_omp_threads(other) == "6"
    assert user_omp_threads({"OMP_NUM_THREADS": "7"}) == "7"  # no record: the environment


@pytest.mark.parametrize("tuned", ["OMP_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT"])
def test_the_spin_count_unless_the_user_tuned_openmp(tuned: str) -> None:
    env: dict[str, str] = {}
    set_spin_count(env)
    assert env == {"GOMP_SPINCOUNT": str(SPIN_COUNT)}
    env = {tuned: "1"}
    set_spin_count(env)
    assert env.get("GOMP_SPINCOUNT", "unset") == ("1" if tuned == "GOMP_SPINCOUNT" else "unset")
