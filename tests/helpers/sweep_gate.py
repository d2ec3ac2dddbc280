"""Test-only callback: hold a sweep's trials at a known point, so a test can kill or release the sweep there
instead of racing it.

Added from the command line, e.g. `+callbacks.gate._target_=tests.helpers.sweep_gate.TrialGate
'+callbacks.gate.run_dir=${paths.run_dir}' +callbacks.gate.signal_dir=DIR +callbacks.gate.first=1` (run
from the repository root, so `tests` imports). A trial's run dir is `<sweep dir>/<trial number>`."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from lightning.pytorch.callbacks import Callback
from typing_extensions import override

RELEASE = "release"


def held(signal_dir: Path) -> list[int]:
    """The trial numbers held at the gate now (or before they were released)."""
    return sorted(int(path.name) for path in signal_dir.glob("*") if path.name.isdigit())


def release(signal_dir: Path) -> None:
    (signal_dir / RELEASE).touch()


class TrialGate(Callback):
    """At fit start, a trial numbered `first` or later writes `<signal_dir>/<number>` and waits until
    `<signal_dir>/release` exists (a test that kills the sweep there never writes it); after `timeout`
    seconds it raises, so a broken test fails instead of hanging."""

    def __init__(self, run_dir: str, signal_dir: str, first: int = 0, timeout: float = 300.0) -> None:
        self.number, self.signal_dir = int(Path(run_dir).name), Path(signal_dir)
        self.first, self.timeout = first, timeout

    @override
    def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
        if self.number < self.first:
            return
        (self.signal_dir / str(self.number)).touch()
        deadline = time.monotonic() + self.timeout
        while not (self.signal_dir / RELEASE).exists():
            if time.monotonic() > deadline:
                raise TimeoutError(f"trial {self.number} was held at the gate for {self.timeout} s")
            time.sleep(0.1)
