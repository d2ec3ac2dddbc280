"""Checkpoint files written atomically in their own directory, and removed one file at a time.

Lightning's TorchCheckpointIO writes through an fsspec transaction whose local temp file lives in
$TMPDIR: moving it onto another filesystem is a copy, and a kill or a full disk during that copy
leaves a 0-byte or truncated last.ckpt. This plugin goes to the trainer's `plugins` (conf/trainer),
which Lightning hands to every strategy, so every checkpoint of every recipe is written this way.

Lightning's removal of an old checkpoint is `fs.rm(path, recursive=True)` on whatever the path names;
the path can come from a resumed checkpoint's callback state (recipes/resume_paths.py drops foreign
ones first). Here a removal never takes a folder: a second line of defence.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import fsspec
import torch
from lightning.fabric.utilities.cloud_io import get_filesystem
from lightning.pytorch.plugins.io import TorchCheckpointIO
from typing_extensions import override

from recipes.atomic import atomic_write, remove_partials

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
        remove_partials(Path(path).parent)  # left by a save that was killed
        atomic_write(path, lambda file: torch.save(checkpoint, file))

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
