"""Bad data files are found at start-up and named: unreadable, truncated and decompression-bomb images
in any split, a worker's decoding error, and MNIST image/label files that disagree in count."""

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
from tests.helpers.runs import assert_clean_failure, train_in_process


def _random_bytes(path: Path) -> None:
    path.write_bytes(np.random.default_rng(0).bytes(300))


def _truncated(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _bomb(path: Path) -> None:
    write_png_header(path, 20000, 20000)


BAD_FILES: dict[str, tuple[Callable[[Path], None], list[str]]] = {
    "random bytes": (_random_bytes, ["not a readable image", "replace or remove it"]),
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
