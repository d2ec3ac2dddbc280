"""Data files checked at start-up and named in every error: image files (ImageFolder) and IDX files
(the MNIST family), so a bad file stops the run before training, in one line that names it.

What start-up checks: every image's header and PIL's `verify()` (container structure and chunk
checksums, e.g. a PNG's CRCs and its end marker; no pixel decoding), which finds random bytes, a
truncated PNG and an image over PIL's decompression-bomb limit for the cost of reading each file
once. Full decoding of every image at start-up would cost as much as an epoch, so a file that only
fails when decoded (e.g. a JPEG with corrupt entropy-coded data) is named by the loader instead.
"""

from __future__ import annotations

import re
import struct
from pathlib import Path

from PIL import Image

from recipes.errors import RecipeError

__all__ = ["DataFileError", "check_idx_pair", "check_image", "idx_count", "image_error", "load_image"]

# What PIL raises for a file it cannot read: unknown format, bad structure, truncation, bombs.
_PIL_ERRORS = (OSError, SyntaxError, ValueError, struct.error, Image.DecompressionBombError)


class DataFileError(RecipeError):
    """A data file that cannot be used. Raised in a DataLoader worker, torch re-raises it in the main
    process as `DataFileError("Caught ... Original Traceback ...\\n<type>: <message>")`: keep the
    message's last line, so the user still sees one line."""

    def __init__(self, message: str) -> None:
        if message.startswith("Caught ") and "\n" in message:
            message = message.rstrip().splitlines()[-1].split(": ", 1)[-1]
        super().__init__(message)


def image_error(path: str | Path, err: Exception) -> DataFileError:
    """The one line for an image PIL refused, with what to do about it."""
    if isinstance(err, Image.DecompressionBombError):
        found = re.search(r"\((\d+) pixels\)", str(err))
        pixels = f"{int(found.group(1)):,} pixels" if found else "too many pixels"
        return DataFileError(f"{path} has {pixels}, over PIL's decompression-bomb limit of "
                             f"{2 * Image.MAX_IMAGE_PIXELS:,}: downscale it (images are resized to "
                             f"data.image_size anyway) or remove it")
    return DataFileError(f"{path} is not a readable image ({type(err).__name__}: {err}): replace or remove it")


def check_image(path: str | Path) -> None:
    """Header and structure of one image, without decoding its pixels."""
    try:
        with Image.open(path) as image:
            image.verify()
    except _PIL_ERRORS as err:
        raise image_error(path, err) from None


def load_image(path: str, mode: str) -> Image.Image:
    """The ImageFolder loader: decode and convert to `mode`, naming the file in any error."""
    try:
        with Image.open(path) as image:
            return image.convert(mode)
    except _PIL_ERRORS as err:
        raise image_error(path, err) from None


def idx_count(path: Path) -> int | None:
    """The item count in an IDX file's header (first dimension), or None when the file is absent."""
    if not path.is_file():
        return None
    with path.open("rb") as file:
        header = file.read(8)
    if len(header) < 8:
        raise DataFileError(f"{path} is too short for an IDX header ({len(header)} bytes): replace the file")
    return struct.unpack(">I", header[4:8])[0]


def check_idx_pair(images: Path, labels: Path) -> None:
    """An IDX image file and its label file must hold the same number of items."""
    n_images, n_labels = idx_count(images), idx_count(labels)
    if n_images is not None and n_labels is not None and n_images != n_labels:
        raise DataFileError(f"{images} holds {n_images} images but {labels} holds {n_labels} labels: "
                            "the two files must come from the same release; replace them")
