"""Test-only file-system faults, real ones where this process may make them: a small disk (a tmpfs) and a
read-only folder (a read-only bind mount: root ignores chmod), else chmod for a user that is not root.
The callbacks make a fault mid-run, at the start of a given epoch, e.g. `+callbacks.fault._target_=
tests.helpers.faults.FillDiskAt +callbacks.fault.epoch=1 +callbacks.fault.folder=DIR` (run from the repository
root, so `tests` imports)."""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from lightning.pytorch.callbacks import Callback
from typing_extensions import override

FILLER = "filler"


def _mount(*args: str) -> bool:
    return subprocess.run(["mount", *args], capture_output=True, check=False).returncode == 0


def _mounted(folder: Path) -> bool:
    """Whether a mount sits at `folder` (os.path.ismount misses a bind mount of a folder onto itself)."""
    points = {line.split()[1] for line in Path("/proc/self/mounts").read_text().splitlines()}
    return str(folder) in points


def _unmount(folder: Path) -> None:
    while _mounted(folder):
        if subprocess.run(["umount", "-l", str(folder)], capture_output=True, check=False).returncode:
            return


@contextlib.contextmanager
def small_disk(folder: Path, size: str = "32m") -> Iterator[Path]:
    """A tmpfs of `size` mounted at `folder` for the block (the test skips where mounting is not allowed)."""
    folder.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0 or not _mount("-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)):
        pytest.skip("a small disk needs a tmpfs mount (root)")
    try:
        yield folder
    finally:
        _unmount(folder)


def make_read_only(folder: Path) -> None:
    """Make `folder` read-only: a read-only bind mount of it onto itself as root (EROFS), else chmod
    (EACCES). Undo with writable_again."""
    if os.geteuid() != 0:
        folder.chmod(0o555)
        return
    if not (_mount("--bind", str(folder), str(folder)) and _mount("-o", "remount,bind,ro", str(folder))):
        _unmount(folder)
        raise RuntimeError(f"cannot bind-mount {folder} read-only")


def skip_unless_read_only_works(scratch: Path) -> None:
    """Skip the test where this process cannot make a read-only folder (root without mount rights)."""
    scratch.mkdir(parents=True, exist_ok=True)
    try:
        make_read_only(scratch)
    except RuntimeError as err:
        pytest.skip(str(err))
    try:
        with open(scratch / "probe", "w"):
            pass
    except OSError:
        return
    finally:
        writable_again(scratch)
    pytest.skip(f"{scratch} stayed writable")


def writable_again(folder: Path) -> None:
    _unmount(folder)
    if folder.is_dir():
        folder.chmod(0o755)


@contextlib.contextmanager
def read_only(folder: Path) -> Iterator[Path]:
    make_read_only(folder)
    try:
        yield folder
    finally:
        writable_again(folder)


def fill(folder: Path, reserve: int) -> None:
    """Write a file in `folder` that leaves `reserve` bytes free on its file system."""
    stat = os.statvfs(folder)
    size = stat.f_bavail * stat.f_frsize - reserve
    with open(folder / FILLER, "wb") as file:
        chunk = b"\0" * (1 << 20)
        while size > 0:
            size -= file.write(chunk[: min(size, len(chunk))])


class FillDiskAt(Callback):
    """At the start of epoch `epoch`, fill the disk that holds `folder`, leaving `reserve` bytes (room
    for log lines and metrics.csv, not for a checkpoint)."""

    def __init__(self, epoch: int, folder: str, reserve: int = 64 << 10) -> None:
        self.epoch, self.folder, self.reserve = epoch, Path(folder), reserve

    @override
    def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
        # One rank fills: a second rank's fill would see the disk full, reopen the filler and truncate it.
        if trainer.current_epoch == self.epoch and trainer.is_global_zero:
            fill(self.folder, self.reserve)


class ReadOnlyAt(Callback):
    """At the start of epoch `epoch`, make `folder` read-only (the test makes it writable again)."""

    def __init__(self, epoch: int, folder: str) -> None:
        self.epoch, self.folder = epoch, Path(folder)

    @override
    def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
        if trainer.current_epoch == self.epoch:
            make_read_only(self.folder)
