"""Checkpoint files written atomically in their own directory, and removed one file at a time.

Lightning's TorchCheckpointIO writes through an fsspec transaction whose local temp file lives in
$TMPDIR: moving it onto another filesystem is a copy, and a kill or a full disk during that copy
leaves a 0-byte or truncated last.ckpt. This plugin goes to the trainer's `plugins` (conf/trainer),
which Lightning hands to every strategy, so every checkpoint of every recipe is written this way.

A save that fails on the file system (a full disk, a folder made read-only, a quota) stops the run
with CheckpointWriteError, one line naming the file and the reason, not a chain of tracebacks (torch's
zip writer adds its own RuntimeError to the OSError); the checkpoints written before stay as they were.

Lightning's removal of an old checkpoint is `fs.rm(path, recursive=True)` on whatever the path names;
the path can come from a resumed checkpoint's callback state (recipes/checkpointing/resume_paths.py drops foreign
ones first). Here a removal never takes a folder: a second line of defence.
"""

from __future__ import annotations

import errno
import logging
import os
from pathlib import Path
from typing import Any

import fsspec
import torch
from lightning.fabric.utilities.cloud_io import get_filesystem
from lightning.pytorch.plugins.io import TorchCheckpointIO
from typing_extensions import override

from recipes.errors import RunStopped
from recipes.runtime.atomic import atomic_write, remove_partials

__all__ = ["AtomicCheckpointIO", "CheckpointWriteError", "log", "os_error"]

# What the user can do about a failed write, by errno (anything else: the reason is all there is to say).
_REMEDIES = {
    errno.ENOSPC: "free some space on its disk",
    errno.EDQUOT: "free some space within your disk quota",
    errno.EROFS: "make its folder writable",
    errno.EACCES: "make its folder writable",
    errno.EPERM: "make its folder writable",
}


class CheckpointWriteError(RunStopped):
    """A checkpoint the file system refused mid-run; `remedy` is what to do before resuming."""

    def __init__(self, message: str, remedy: str) -> None:
        super().__init__(message)
        self.remedy = remedy


def os_error(err: BaseException) -> OSError | None:
    """The OSError behind `err`, itself or in its chain (torch raises a RuntimeError while handling one)."""
    seen: BaseException | None = err
    while seen is not None and not isinstance(seen, OSError):
        seen = seen.__cause__ or seen.__context__
    return seen


log = logging.getLogger(__name__)
_LOCAL = ("file", "local")


class AtomicCheckpointIO(TorchCheckpointIO):
    """TorchCheckpointIO whose local saves are temp file + fsync + rename beside the target."""

    @override
    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: str | os.PathLike, storage_options: Any | None = None
    ) -> None:
        if storage_options is not None or "://" in str(path):
            # remote storage (s3://...) commits whole objects itself; Lightning's path handles it
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        try:
            remove_partials(Path(path).parent)  # left by a save that was killed
            atomic_write(path, lambda file: torch.save(checkpoint, file))
        except Exception as err:
            cause = os_error(err)
            if cause is None:
                raise
            reason = cause.strerror or str(cause)
            raise CheckpointWriteError(
                f"checkpoint {path} could not be written ({reason}); the checkpoints written before it are intact",
                _REMEDIES.get(cause.errno or 0, "fix that"),
            ) from err

    @override
    def remove_checkpoint(self, path: str | os.PathLike) -> None:
        """Remove one checkpoint file (or a link); a folder, or anything else that is not a file, stays
        with a one-line warning."""
        text = str(path)
        protocol = fsspec.utils.get_protocol(text)
        if protocol in _LOCAL:
            local = Path(fsspec.core.strip_protocol(text))
            if local.is_symlink() or local.is_file():
                local.unlink()
            elif local.exists():
                log.warning(f"not removing {text}: a checkpoint is a file, and this is not one")
            return
        fs = get_filesystem(text)
        if fs.isfile(text):
            fs.rm(text)  # one remote object; never recursive
        elif fs.exists(text):
            log.warning(f"not removing {text}: a checkpoint is a file, and this is not one")
