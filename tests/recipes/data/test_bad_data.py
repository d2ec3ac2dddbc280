"""Bad data files are found at start-up and named: unreadable, truncated, header-only and
decompression-bomb images in any split, a worker's decoding error, and MNIST IDX files that disagree in
count, have a wrong magic number, are truncated or hold labels outside the classes."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from recipes.data.files import DataFileError
from recipes.data.folder import ImageFolderDataModule
from recipes.data.synthetic_files import (
    IDX_LABELS_MAGIC,
    write_idx,
    write_image_folder,
    write_mnist_idx,
    write_png_header,
)
from recipes.data.vision import TorchvisionDataModule
from recipes.errors import EXIT_BAD_INPUT
from tests.helpers.runs import assert_clean_failure, train_in_process


def _random_bytes(path: Path) -> None:
    path.write_bytes(np.random.default_rng(0).bytes(300))


def _truncated(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _bomb(path: Path) -> None:
    write_png_header(path, 20000, 20000)


def _header_only(path: Path) -> None:
    write_png_header(path, 8, 8)  # a valid PNG header and end marker, no pixel data (IDAT) between


def _empty(path: Path) -> None:
    path.write_bytes(b"")


BAD_FILES: dict[str, tuple[Callable[[Path], None], list[str]]] = {
    "random bytes": (_random_bytes, ["not a readable image", "replace or remove it"]),
    "no image data": (_header_only, ["holds no image data", "PNG header only", "replace or remove it"]),
    "zero bytes": (_empty, ["not a readable image", "cannot identify image file"]),
    "truncated png": (_truncated, ["not a readable image", "Truncated"]),
    "decompression bomb": (_bomb, ["400,000,000 pixels", "decompression-bomb limit", "downscale it"]),
}


@pytest.mark.parametrize("split", ["test", "val"])
@pytest.mark.parametrize("case", BAD_FILES)
def test_bad_image_is_named_at_construction(case: str, split: str, tmp_path: Path) -> None:
    """Before any training: the data module refuses when it is built, naming the file."""
    root = write_image_folder(tmp_path / "imgs", per_class=2, size=8)
    bad = root / split / "dog" / "dog_1.png"
    spoil, expected = BAD_FILES[case]
    spoil(bad)
    with pytest.raises(DataFileError) as err:
        ImageFolderDataModule(root=str(root), num_workers=0)
    message = str(err.value)
    assert message.startswith(str(bad)) and "\n" not in message, message
    for text in expected:
        assert text in message, message


def test_decoding_error_in_a_worker_names_the_file(tmp_path: Path) -> None:
    """A file spoilt after start-up (or one that only fails when decoded) fails in a DataLoader worker:
    the error reaching the main process is still one line naming the file."""
    root = write_image_folder(tmp_path / "imgs", per_class=2, size=8)
    dm = ImageFolderDataModule(root=str(root), num_workers=1)
    dm.setup("test")
    bad = root / "test" / "cat" / "cat_0.png"
    _truncated(bad)
    with pytest.raises(DataFileError) as err:
        list(dm.test_dataloader())
    message = str(err.value)
    assert message.startswith(str(bad)) and "truncated" in message and "\n" not in message, message


def test_mnist_count_mismatch_names_both_files(tmp_path: Path) -> None:
    root = write_mnist_idx(tmp_path / "mnist", n_train=60)
    raw = root / "MNIST" / "raw"
    write_idx(raw / "train-labels-idx1-ubyte", IDX_LABELS_MAGIC, np.zeros(50, dtype=np.uint8))
    with pytest.raises(DataFileError) as err:
        TorchvisionDataModule(dataset="MNIST", root=str(root))
    message = str(err.value)
    for text in (str(raw / "train-images-idx3-ubyte"), "60 images", str(raw / "train-labels-idx1-ubyte"), "50 labels"):
        assert text in message, message


def test_cli_refuses_a_corrupt_test_image_before_training(run_dir: Path, tmp_path: Path) -> None:
    root = write_image_folder(tmp_path / "imgs", per_class=2, size=8)
    bad = root / "test" / "fox" / "fox_0.png"
    _random_bytes(bad)
    proc = train_in_process(run_dir, "data=imagefolder", f"data.root={root}", "data.num_workers=0", "data.image_size=8")
    assert_clean_failure(proc, run_dir, str(bad), "not a readable image")
    assert "Epoch" not in proc.stdout + proc.stderr


def test_a_data_module_without_the_contract_is_refused_in_one_line(run_dir: Path) -> None:
    """A `data._target_` that is not a recipes data module (recipes.data.contract.RecipeData) is refused
    before a net is sized from it, naming what it lacks."""
    proc = train_in_process(run_dir, "data._target_=torch.nn.Identity")
    assert_clean_failure(proc, run_dir, "data._target_=torch.nn.Identity is not a recipes data module", "num_classes")


@pytest.mark.parametrize("spoil", [_header_only, _empty], ids=["no image data", "zero bytes"])
def test_cli_refuses_an_image_without_data_before_training(
    spoil: Callable[[Path], None], run_dir: Path, tmp_path: Path
) -> None:
    """A PNG with a header and no pixel data (once a traceback: "Error in call to target"), or none at
    all, in the training split: one line naming it, before any training."""
    root = write_image_folder(tmp_path / "imgs", per_class=2, size=8)
    bad = root / "train" / "cat" / "cat_1.png"
    spoil(bad)
    proc = train_in_process(run_dir, "data=imagefolder", f"data.root={root}", "data.num_workers=0", "data.image_size=8")
    _assert_refused_before_training(proc, run_dir, str(bad))


def _magic(raw: Path) -> Path:
    path = raw / "train-images-idx3-ubyte"
    data = bytearray(path.read_bytes())
    data[2:4] = b"\x08\x02"  # claims 2 dimensions: torchvision asserted on it
    path.write_bytes(bytes(data))
    return path


def _gzip_magic(raw: Path) -> Path:
    path = raw / "t10k-labels-idx1-ubyte"
    path.write_bytes(b"\x1f\x8b\x08\x00" + path.read_bytes()[4:])  # a gzip signature where the magic is
    return path


def _truncated_idx(raw: Path) -> Path:
    path = raw / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-100])
    return path


def _label_too_large(raw: Path) -> Path:
    path = raw / "train-labels-idx1-ubyte"
    labels = np.arange(60, dtype=np.uint8) % 10
    labels[17] = 10  # one past the last of 10 classes: an IndexError in the loss, once training ran
    write_idx(path, IDX_LABELS_MAGIC, labels)
    return path


def _label_byte_max(raw: Path) -> Path:
    path = raw / "t10k-labels-idx1-ubyte"
    write_idx(path, IDX_LABELS_MAGIC, np.full(20, 255, dtype=np.uint8))
    return path


BAD_IDX: dict[str, tuple[Callable[[Path], Path], list[str]]] = {
    "bad magic number": (_magic, ["magic number 0x00000802", "not 0x00000803", "replace it"]),
    "gzip where the magic is": (_gzip_magic, ["magic number 0x1f8b0800", "compressed"]),
    "truncated image file": (_truncated_idx, ["46940 bytes", "60 x 28 x 28 = 47040", "truncated"]),
    "label 10 of 10 classes": (_label_too_large, ["label 10 (item 17)", "10 classes (labels 0 to 9)"]),
    "label 255 in the test split": (_label_byte_max, ["label 255 (item 0)", "10 classes"]),
}


@pytest.mark.parametrize("case", BAD_IDX)
def test_cli_refuses_a_bad_mnist_file_before_training(case: str, run_dir: Path, tmp_path: Path) -> None:
    """The real MNIST loader (torchvision's, through data=mnist) on IDX files spoilt one way each: one
    line naming the file before any training, not an AssertionError or a mid-fit IndexError."""
    root = write_mnist_idx(tmp_path / "mnist")
    spoil, expected = BAD_IDX[case]
    bad = spoil(root / "MNIST" / "raw")
    proc = train_in_process(run_dir, "data=mnist", f"data.root={root}", "trainer.max_epochs=1")
    _assert_refused_before_training(proc, run_dir, str(bad), *expected)


def _assert_refused_before_training(proc, run_dir: Path, *expected: str) -> None:
    """Exit 2, stderr the one `error:` line (naming `expected`), no traceback, no run dir, no epoch run."""
    assert proc.returncode == EXIT_BAD_INPUT, proc.stderr[-2000:]
    assert_clean_failure(proc, run_dir, *expected)
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr[-2000:]
    assert "Epoch" not in proc.stdout + proc.stderr
