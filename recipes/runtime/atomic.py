"""Files that are either the old version or the complete new one, never a part: the new bytes go to a
temp file in the target's own directory (so the rename cannot become a copy across filesystems),
are flushed to disk, and replace the target in one rename. A kill or a full disk leaves the old file.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

__all__ = ["PARTIAL_SUFFIX", "atomic_write", "fsync_dir", "remove_partials"]

PARTIAL_SUFFIX = ".partial"


def atomic_write(path: str | os.PathLike[str], write: Callable[[BinaryIO], None]) -> None:
    """Call `write(file)` on a temp file beside `path`, then make it `path` atomically and durably;
    on any failure (e.g. ENOSPC) the temp file is removed and `path` is left as it was."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    temp = target.with_name(f".{target.name}.{secrets.token_hex(4)}{PARTIAL_SUFFIX}")
    # os.open with 0o666 (not mkstemp's 0o600): the umask gives the file the mode a plain open would
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temp, target)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    fsync_dir(target.parent)


def fsync_dir(directory: Path) -> None:
    """Persist a rename: on POSIX the directory entry reaches the disk only when the directory is synced."""
    if os.name != "posix":
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def remove_partials(directory: Path) -> None:
    """Delete temp files that a killed atomic_write left in `directory` (only one writer per directory,
    rank 0, so no temp file here belongs to a write still in progress)."""
    for partial in directory.glob(f".*{PARTIAL_SUFFIX}"):
        partial.unlink(missing_ok=True)
