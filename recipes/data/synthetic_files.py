"""Tiny data sets written in the real on-disk formats torchvision reads (IDX, CIFAR pickles, PNG
folders), so tests and benchmarks load them through torchvision's own dataset classes without any
network.

Every image carries a class-dependent pattern plus noise, so a net can learn something in one epoch.
"""

from __future__ import annotations

import pickle
import struct
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

__all__ = [
    "CIFAR10_CLASSES",
    "IDX_IMAGES_MAGIC",
    "IDX_LABELS_MAGIC",
    "write_cifar10",
    "write_idx",
    "write_image_folder",
    "write_mnist_idx",
    "write_png_header",
]

IDX_IMAGES_MAGIC = 2051  # 0x00000803: unsigned bytes, 3 dimensions
IDX_LABELS_MAGIC = 2049  # 0x00000801: unsigned bytes, 1 dimension
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def _labels(n: int, classes: int, rng: np.random.Generator) -> np.ndarray:
    """Every class present (round robin), in shuffled order like a real data set."""
    return rng.permutation(np.arange(n) % classes).astype(np.uint8)


def _square_images(labels: np.ndarray, side: int, rng: np.random.Generator) -> np.ndarray:
    """N x side x side uint8: dim noise plus a bright square whose grid position is the label."""
    images = rng.integers(0, 60, size=(len(labels), side, side), dtype=np.uint8)
    cell = side // 4
    for image, label in zip(images, labels):
        row, col = divmod(int(label) % 16, 4)
        image[row * cell : (row + 1) * cell, col * cell : (col + 1) * cell] = 255
    return images


def write_idx(path: Path, magic: int, data: np.ndarray) -> None:
    """An IDX file: big-endian magic, one big-endian uint32 per dimension, then the uint8 data."""
    header = struct.pack(f">{1 + data.ndim}I", magic, *data.shape)
    path.write_bytes(header + np.ascontiguousarray(data, dtype=np.uint8).tobytes())


def write_mnist_idx(
    root: Path, name: str = "MNIST", n_train: int = 60, n_test: int = 20, classes: int = 10, seed: int = 0
) -> Path:
    """root/<name>/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte, uncompressed: what torchvision's
    MNIST-family classes (MNIST, FashionMNIST, KMNIST: `name` is the class name) read. Returns root."""
    rng = np.random.default_rng(seed)
    raw = Path(root) / name / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        labels = _labels(n, classes, rng)
        write_idx(raw / f"{prefix}-images-idx3-ubyte", IDX_IMAGES_MAGIC, _square_images(labels, 28, rng))
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", IDX_LABELS_MAGIC, labels)
    return Path(root)


def write_cifar10(root: Path, n_per_batch: int = 20, seed: int = 0) -> Path:
    """root/cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta} as CIFAR's pickled dicts:
    "data" uint8 N x 3072 (channel-major rows: 1024 R, 1024 G, 1024 B), "labels" a list of ints.

    The keys are str: the originals are Python 2 pickles whose byte-string keys torchvision's
    `pickle.load(..., encoding="latin1")` decodes to str, so str keys are what it reads. Returns root.
    """
    rng = np.random.default_rng(seed)
    folder = Path(root) / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    palette = rng.integers(0, 256, size=(len(CIFAR10_CLASSES), 3))
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for name in names:
        labels = _labels(n_per_batch, len(CIFAR10_CLASSES), rng)
        pattern = _square_images(labels, 32, rng).astype(np.float32) / 255  # N x 32 x 32
        colour = palette[labels][:, :, None, None] * (0.5 + 0.5 * pattern[:, None])  # N x 3 x 32 x 32
        batch = {
            "batch_label": f"{name.replace('_', ' ')} of 6",
            "labels": [int(label) for label in labels],
            "data": colour.astype(np.uint8).reshape(n_per_batch, 3 * 32 * 32),
            "filenames": [f"{CIFAR10_CLASSES[label]}_{i}.png" for i, label in enumerate(labels)],
        }
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
    meta = {"num_cases_per_batch": n_per_batch, "label_names": CIFAR10_CLASSES, "num_vis": 3 * 32 * 32}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))
    return Path(root)


def write_image_folder(
    root: Path,
    layout: str = "splits",
    classes: Sequence[str] = ("cat", "dog", "fox"),
    per_class: int = 6,
    size: int = 12,
    mode: str = "RGB",
    seed: int = 0,
) -> Path:
    """PNG files in ImageFolder layout: root/{train,val,test}/<class>/*.png ("splits", `per_class`
    images per class in each split) or root/<class>/*.png ("single"). Returns root."""
    if layout not in ("splits", "single"):
        raise ValueError(f"layout={layout!r} must be 'splits' or 'single'")
    rng = np.random.default_rng(seed)
    splits = ("train", "val", "test") if layout == "splits" else ("",)
    for split in splits:
        for index, name in enumerate(classes):
            folder = Path(root) / split / name
            folder.mkdir(parents=True, exist_ok=True)
            labels = np.full(per_class, index, dtype=np.uint8)
            for i, pixels in enumerate(_square_images(labels, size, rng)):
                image = Image.fromarray(pixels)  # 2-D uint8: mode L
                (image.convert(mode) if mode != "L" else image).save(folder / f"{name}_{i}.png")
    return Path(root)


def write_png_header(path: Path, width: int, height: int) -> Path:
    """A PNG that declares `width` x `height` pixels but holds no pixel data: PIL reads its size from
    the header (IHDR) alone, so it stands in for a huge image without the memory or the disk."""
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit grayscale
    Path(path).write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b""))
    return Path(path)
