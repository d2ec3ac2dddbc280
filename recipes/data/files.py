"""Data files checked at start-up and named in every error: image files (ImageFolder) and IDX files
(the MNIST family), so a bad file stops the run before training, in one line that names it.

What start-up checks: every image's header and PIL's `verify()` (container structure and chunk
checksums, e.g. a PNG's CRCs and its end marker; no pixel decoding), which finds random bytes, a
truncated PNG, a PNG with no pixel data and an image over PIL's decompression-bomb limit for the
cost of reading each file once; every IDX file's magic number, its size against the dimensions its
header declares, and the range of the labels (one byte each: reading them is cheap). Full decoding of every image at start-up would cost as much as an epoch, so a file that only
fails when decoded (e.g. a JPEG with corrupt entropy-coded data) is named by the loader instead.
"""

from __future__ import annotations

import re
import struct
from math import prod
from pathlib import Path

from PIL import Image

from recipes.errors import RecipeError

__all__ = [
    "IDX_MAGIC",
    "DataFileError",
    "check_idx_pair",
    "check_image",
    "idx_dims",
    "image_error",
    "load_image",
]

# What PIL raises for a file it cannot read: unknown format, bad structure, truncation, bombs (and
# the IndexError / EOFError some of its plugins raise on malformed chunks).
_PIL_ERRORS = (OSError, SyntaxError, ValueError, IndexError, EOFError, struct.error, Image.DecompressionBombError)

# IDX magic numbers of the MNIST family: 0x0000 0x08 (unsigned bytes) then the number of dimensions.
IDX_MAGIC = {"images": 0x00000803, "labels": 0x00000801}


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
        return DataFileError(
            f"{path} has {pixels}, over PIL's decompression-bomb limit of "
            f"{2 * Image.MAX_IMAGE_PIXELS:,}: downscale it (images are resized to "
            f"data.image_size anyway) or remove it"
        )
    return DataFileError(f"{path} is not a readable image ({type(err).__name__}: {err}): replace or remove it")


def check_image(path: str | Path) -> None:
    """Header and structure of one image, without decoding its pixels."""
    try:
        with Image.open(path) as image:
            if not image.tile:  # a header (e.g. a PNG's IHDR) with no pixel data after it
                raise DataFileError(f"{path} holds no image data (a {image.format} header only): replace or remove it")
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


def idx_dims(path: Path, kind: str) -> tuple[int, ...] | None:
    """The dimensions an IDX file of `kind` ("images" or "labels") declares, after checking its magic
    number and that its size matches them (torchvision would assert, or fail reshaping, mid-setup);
    None when the file is absent."""
    if not path.is_file():
        return None
    size, ndim = path.stat().st_size, IDX_MAGIC[kind] & 0xFF
    with path.open("rb") as file:
        header = file.read(4 + 4 * ndim)
    if len(header) < 4 + 4 * ndim:
        raise DataFileError(f"{path} is too short for an IDX header ({len(header)} bytes): replace the file")
    magic, *dims = struct.unpack(f">{1 + ndim}I", header)
    if magic != IDX_MAGIC[kind]:
        raise DataFileError(
            f"{path} has magic number {magic:#010x}, not {IDX_MAGIC[kind]:#010x} (IDX {kind} of "
            "unsigned bytes): it is not an MNIST-family file, or it is compressed or corrupt; "
            "replace it"
        )
    if size != len(header) + prod(dims):
        raise DataFileError(
            f"{path} holds {size - len(header)} bytes of data but its header declares "
            f"{' x '.join(map(str, dims))} = {prod(dims)}: the file is truncated or corrupt; replace it"
        )
    return tuple(dims)


def check_idx_pair(images: Path, labels: Path, num_classes: int) -> None:
    """An IDX image file and its label file: each well-formed, the same number of items, and every
    label a class index below `num_classes` (an out-of-range label fails only inside the loss)."""
    image_dims, label_dims = idx_dims(images, "images"), idx_dims(labels, "labels")
    if image_dims is not None and label_dims is not None and image_dims[0] != label_dims[0]:
        raise DataFileError(
            f"{images} holds {image_dims[0]} images but {labels} holds {label_dims[0]} labels: "
            "the two files must come from the same release; replace them"
        )
    values = labels.read_bytes()[8:] if label_dims else b""
    top = max(values, default=0)
    if top >= num_classes:
        raise DataFileError(
            f"{labels} has label {top} (item {values.index(top)}), but this data set has "
            f"{num_classes} classes (labels 0 to {num_classes - 1}): replace the file"
        )
