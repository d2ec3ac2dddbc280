"""Where this process stands in a launch, read from the launcher's environment: its rank, the name
every rank of one launch shares, whether srun or torchrun started it, and its parent at start."""

from __future__ import annotations

import os
import uuid
from datetime import datetime

__all__ = ["PARENT_AT_START", "launched_externally", "process_rank", "run_id"]

# Every variable a launcher sets for a process's place: global rank (torchrun, Lightning), rank within
# the node (Lightning's DDP children, torchrun), node rank (a hand launch across nodes, torchrun's group).
_RANK_VARIABLES = ("RANK", "SLURM_PROCID", "LOCAL_RANK", "NODE_RANK", "GROUP_RANK")


def process_rank() -> int:
    """0 exactly for global rank 0 (and for a run that is not distributed), else a positive rank from the
    launcher's environment. Every variable counts: a node other than node 0 of a hand launch
    (NODE_RANK=1, no RANK) and a worker of node 0 (LOCAL_RANK=1) are both not rank 0."""
    for var in _RANK_VARIABLES:
        value = int(os.environ.get(var, "0") or 0)
        if value:
            return value
    return 0


def _short_uuid(text: str) -> str:
    """A uuid (torchrun --standalone's fresh rendezvous id) cut to 8 hex digits; other ids unchanged."""
    try:
        return uuid.UUID(text).hex[:8]
    except ValueError:
        return text


def run_id() -> str:
    """A name for this launch that every rank computes alike, so all ranks of one job share one run dir.

    In an srun step (not an interactive `srun --pty bash`): slurm-JOB, or slurm-ARRAYJOB_TASK for an
    array task, with .STEP added for the job's second and later srun steps; a requeued job gets its dir
    back. Under torchrun: torchrun-RDZV_ID (--standalone and single-node runs get a fresh uuid, cut to
    8 hex digits; multi-node runs pass --rdzv-id=JOB). Otherwise the clock to the microsecond.
    Lightning's popen children get the resolved run dir on their command line and never call this."""
    env = os.environ
    if "SLURM_JOB_ID" in env and "SLURM_STEP_ID" in env and env.get("SLURM_JOB_NAME") not in ("bash", "interactive"):
        job = env["SLURM_JOB_ID"]
        if "SLURM_ARRAY_JOB_ID" in env and "SLURM_ARRAY_TASK_ID" in env:
            job = f"{env['SLURM_ARRAY_JOB_ID']}_{env['SLURM_ARRAY_TASK_ID']}"
        step = env["SLURM_STEP_ID"]
        return f"slurm-{job}" if step == "0" else f"slurm-{job}.{step}"
    rdzv = env.get("TORCHELASTIC_RUN_ID", "none")
    if rdzv != "none":  # "none": torchrun's default for a static multi-node rendezvous, not an id
        return f"torchrun-{_short_uuid(rdzv)}"
    return datetime.now().strftime("%Y-%m-%d_%H-%M-%S_%f")


def launched_externally() -> bool:
    """True when srun or torchrun started one process per rank (Lightning then starts none itself)."""
    from lightning.fabric.plugins.environments import SLURMEnvironment, TorchElasticEnvironment

    return SLURMEnvironment.detect() or TorchElasticEnvironment.detect()


# This process's parent when it started: for a DDP child that Lightning started, its launcher (rank 0).
PARENT_AT_START = os.getppid()
