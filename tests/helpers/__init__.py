"""What tests import or start: runs of an entry point (runs, in_process), configs and modules built in
this process (build), and the test-only callbacks and stand-ins a run is given by `_target_` or started
with `python -m` (kill_at, faults, slow_worker, stalled_rank, replica_probe, sweep_gate, sweep_orphan).
A run that names one must start from the repository root (REPO), so that `tests` imports."""

from __future__ import annotations

from pathlib import Path

__all__ = ["REPO"]

REPO = Path(__file__).resolve().parents[2]
