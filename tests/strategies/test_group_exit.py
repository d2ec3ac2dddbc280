"""A worker of Lightning's multiprocessing launcher (`strategy.start_method=spawn`) leaves its process group
before it exits: a gloo group alive at interpreter exit aborted such workers (SIGABRT) after a finished fit.
A rank of the popen launcher keeps it (recipes/stages/fit.py leaves it after the fit, when nothing syncs)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.helpers import REPO

SCRIPT = """
import sys
import torch.distributed as dist
from lightning.pytorch.strategies.launchers import _MultiProcessingLauncher, _SubprocessScriptLauncher
from recipes.strategies.ddp import DDPStrategy
from recipes.strategies.timeout import leave_group_before_exit

store = sys.argv[1]
seen = []
for launcher in (_SubprocessScriptLauncher, _MultiProcessingLauncher):
    dist.init_process_group("gloo", init_method=f"file://{store}.{launcher.__name__}", rank=0, world_size=1)
    strategy = DDPStrategy()
    strategy._launcher = launcher.__new__(launcher)  # its type is what decides
    leave_group_before_exit(strategy)
    seen.append(dist.is_initialized())
    if dist.is_initialized():
        dist.destroy_process_group()
print(seen)
"""


def test_only_a_spawned_worker_leaves_the_group(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path / "store")], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1] == "[True, False]", proc.stdout  # popen rank keeps it; spawned leaves
