"""Checkpoint files written atomically in their own directory.

Lightning's TorchCheckpointIO writes through an fsspec transaction whose local temp file lives in
$TMPDIR: moving it onto another filesystem is a copy, and a kill or a full disk during that copy
leaves a 0-byte or truncated last.ckpt. This plugin goes to the trainer's `plugins` (conf/trainer),
which Lightning hands to every strategy, so every checkpoint of every recipe is written this way.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO
from typing_extensions import override

from recipes.atomic import atomic_write, remove_partials


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
