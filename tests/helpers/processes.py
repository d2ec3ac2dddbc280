"""Test helpers that look at processes through Linux /proc: which of a run's processes still run."""

from __future__ import annotations

from pathlib import Path


def _stat(pid: int) -> list[str] | None:
    """/proc/PID/stat's fields after "pid (comm)": state, ppid, pgrp, session, ...; None once it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat[stat.rindex(")") + 2 :].split()


def live(pids: list[int]) -> list[int]:
    """Those of `pids` still running (an exited process that nobody reaped, a zombie, is not)."""
    return [pid for pid in pids if (fields := _stat(pid)) is not None and fields[0] != "Z"]


def session(sid: int) -> list[int]:
    """The running processes of session `sid`: a run started with start_new_session=True, its ranks or
    workers, its fork server and resource tracker."""
    pids = [int(entry.name) for entry in Path("/proc").iterdir() if entry.name.isdigit()]
    return live([pid for pid in pids if (fields := _stat(pid)) is not None and int(fields[3]) == sid])


def parent(pid: int) -> int:
    """The parent of running process `pid`."""
    fields = _stat(pid)
    assert fields is not None, f"process {pid} is gone"
    return int(fields[1])
