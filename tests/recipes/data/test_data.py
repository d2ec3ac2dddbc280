"""The data modules on real on-disk formats: splits, shapes, normalization, domain shift, and the
whole CLI on MNIST, CIFAR-10 and ImageFolder data written to tmp_path (no network)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import torch
import torchvision.datasets.cifar
from sklearn.datasets import load_digits

from recipes.data.digits import DigitsDataModule
from recipes.data.folder import ImageFolderDataModule
from recipes.data.shift import domain_shift
from recipes.data.synthetic_files import write_cifar10, write_image_folder, write_mnist_idx
from recipes.data.vision import TorchvisionDataModule
from recipes.errors import RecipeError
from tests.helpers.runs import train_ok_in_process

SPLITS = ("train", "val", "test")


def first_batch(datamodule: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """One training batch, as the Trainer would draw it."""
    return next(iter(datamodule.train_dataloader()))


def split_labels(dataset: Any) -> set[int]:
    """The classes a split holds (read through the whole pipeline, as training would)."""
    return {int(label) for _, label in dataset}


@pytest.fixture
def cifar_md5_off(monkeypatch: pytest.MonkeyPatch) -> None:
    """torchvision checks every CIFAR file against the md5 of the real download (in `__init__` and in
    `_load_meta`, download or not), so no home-made file passes. For in-process tests only, keep its
    "file exists" check and drop the md5 comparison; everything else (unpickling, reshaping) is real."""
    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", lambda fpath, md5=None: os.path.isfile(fpath))


# --- digits -------------------------------------------------------------------------------------


def test_digits_splits_are_disjoint_stratified_and_cover_everything() -> None:
    dm = DigitsDataModule(normalize=None)
    dm.setup("fit")
    bunch = load_digits()
    split = dm.split_indices(bunch.target.tolist())
    indices = [set(split[name]) for name in SPLITS]
    assert sum(len(s) for s in indices) == len(bunch.target) == 1797
    assert set().union(*indices) == set(range(1797))
    assert not (indices[0] & indices[1] or indices[0] & indices[2] or indices[1] & indices[2])
    images = torch.tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / 16
    for name in SPLITS:
        x, y = getattr(dm, f"{name}_set").tensors
        assert torch.equal(x, images[split[name]]), f"{name}_set is not the images of split_indices()"
        assert set(y.tolist()) == set(range(10)), f"{name} misses a class"
    assert len(dm.test_set) == pytest.approx(0.2 * 1797, abs=1)
    assert len(dm.val_set) == pytest.approx(0.1 * 1797, abs=1)


def test_digits_split_depends_only_on_split_seed() -> None:
    labels = load_digits().target.tolist()
    same = [DigitsDataModule(split_seed=0).split_indices(labels) for _ in range(2)]
    other = DigitsDataModule(split_seed=1).split_indices(labels)
    assert same[0] == same[1]
    assert same[0]["test"] != other["test"]


@pytest.mark.parametrize(("image_size", "channels", "shape"), [(None, 1, (1, 8, 8)), (16, 3, (3, 16, 16))])
def test_digits_input_shape_matches_batches(image_size: int | None, channels: int, shape: tuple) -> None:
    dm = DigitsDataModule(batch_size=32, image_size=image_size, channels=channels)
    dm.setup("fit")
    x, y = first_batch(dm)
    assert dm.input_shape == shape
    assert tuple(x.shape) == (32, *shape) and x.dtype == torch.float32
    assert y.shape == (32,)


def test_digits_default_normalization_centres_the_training_set() -> None:
    dm = DigitsDataModule(normalize={"mean": [0.3053], "std": [0.3760]})
    dm.setup("fit")
    x = dm.train_set.tensors[0]
    assert abs(x.mean().item()) < 0.05
    assert x.std().item() == pytest.approx(1.0, abs=0.1)


# --- domain shift -------------------------------------------------------------------------------


def test_shift_rotation_is_a_counter_clockwise_rotation() -> None:
    image = torch.rand(3, 9, 9, generator=torch.Generator().manual_seed(0))
    rotated = domain_shift(rotation=90)(image)
    assert torch.allclose(rotated, torch.rot90(image, 1, dims=(-2, -1)), atol=1e-6)
    assert not torch.allclose(rotated, image)


def test_shift_invert_and_noise() -> None:
    image = torch.linspace(0, 1, 64).reshape(1, 8, 8)
    assert torch.allclose(domain_shift(invert=True)(image), 1 - image)
    noisy = domain_shift(noise=0.3)(image)
    assert (noisy - image).abs().max() > 0.05
    assert noisy.min() >= 0 and noisy.max() <= 1
    with pytest.raises(ValueError, match="noise"):
        domain_shift(noise=-0.1)


def test_digits_with_shift_is_a_fixed_new_domain() -> None:
    plain, inverted = DigitsDataModule(normalize=None), DigitsDataModule(normalize=None, shift={"invert": True})
    plain.setup("fit")
    inverted.setup("fit")
    assert torch.allclose(inverted.test_set.tensors[0], 1 - plain.test_set.tensors[0])
    noisy = [DigitsDataModule(normalize=None, shift={"invert": True, "noise": 0.1}) for _ in range(2)]
    for dm in noisy:
        dm.setup("fit")
    assert torch.equal(noisy[0].train_set.tensors[0], noisy[1].train_set.tensors[0])
    assert not torch.equal(noisy[0].train_set.tensors[0], inverted.train_set.tensors[0])


# --- torchvision data sets ----------------------------------------------------------------------


@pytest.mark.parametrize("dataset", ["MNIST", "FashionMNIST"])
def test_mnist_family_from_idx_files(tmp_path: Path, dataset: str) -> None:
    write_mnist_idx(tmp_path, name=dataset, n_train=60, n_test=20)
    dm = TorchvisionDataModule(dataset=dataset, root=str(tmp_path), download=False, val_fraction=0.1, batch_size=8)
    dm.setup("fit")
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (54, 6, 20)
    assert dm.num_classes == 10 and dm.input_shape == (1, 28, 28)
    x, y = first_batch(dm)
    assert tuple(x.shape) == (8, 1, 28, 28)
    assert y.dtype == torch.long and 0 <= int(y.min()) and int(y.max()) < 10
    assert split_labels(dm.test_set) == set(range(10))

    resized = TorchvisionDataModule(dataset=dataset, root=str(tmp_path), image_size=32, channels=3, batch_size=8)
    resized.setup("fit")
    assert resized.input_shape == (3, 32, 32)
    assert tuple(first_batch(resized)[0].shape) == (8, 3, 32, 32)


def test_mnist_train_val_split_is_seeded(tmp_path: Path) -> None:
    write_mnist_idx(tmp_path)
    modules = [TorchvisionDataModule(dataset="MNIST", root=str(tmp_path), split_seed=s) for s in (0, 0, 1)]
    for dm in modules:
        dm.setup("fit")
    val = [dm.val_set.base.indices for dm in modules]
    assert val[0] == val[1] != val[2]
    assert not set(val[0]) & set(modules[0].train_set.base.indices)


def test_torchvision_root_errors_name_the_fix(tmp_path: Path) -> None:
    with pytest.raises(RecipeError, match="missing or empty"):
        TorchvisionDataModule(dataset="MNIST", root=str(tmp_path / "nowhere"))
    write_mnist_idx(tmp_path, name="FashionMNIST")
    dm = TorchvisionDataModule(dataset="MNIST", root=str(tmp_path))  # FashionMNIST files, not MNIST
    with pytest.raises(RecipeError, match="could not read MNIST"):
        dm.setup("fit")


def test_cifar10_real_integrity_check_rejects_home_made_files(tmp_path: Path) -> None:
    """Why the CLI test on CIFAR-10 turns the md5 check off: unpatched torchvision refuses any non-original
    file."""
    write_cifar10(tmp_path)
    dm = TorchvisionDataModule(dataset="CIFAR10", root=str(tmp_path))
    with pytest.raises(RecipeError, match="corrupted"):
        dm.setup("fit")


@pytest.mark.usefixtures("cifar_md5_off")
def test_cifar10_from_pickled_batches(tmp_path: Path) -> None:
    write_cifar10(tmp_path, n_per_batch=20)
    dm = TorchvisionDataModule(
        dataset="CIFAR10",
        root=str(tmp_path),
        val_fraction=0.1,
        batch_size=8,
        channels=3,
        normalize={"mean": [0.49, 0.48, 0.45], "std": [0.25, 0.24, 0.26]},
    )
    dm.setup("fit")
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (90, 10, 20)
    assert dm.num_classes == 10 and dm.input_shape == (3, 32, 32)
    assert tuple(first_batch(dm)[0].shape) == (8, 3, 32, 32)
    assert dm.test_set.base.classes[0] == "airplane"

    gray = TorchvisionDataModule(dataset="CIFAR10", root=str(tmp_path), channels=1, batch_size=8)
    gray.setup("fit")
    assert gray.input_shape == (1, 32, 32)
    assert tuple(first_batch(gray)[0].shape) == (8, 1, 32, 32)


# --- ImageFolder --------------------------------------------------------------------------------


def test_imagefolder_splits_layout(tmp_path: Path) -> None:
    write_image_folder(tmp_path, layout="splits", per_class=4, size=12)
    dm = ImageFolderDataModule(root=str(tmp_path), image_size=16, channels=3, batch_size=5)
    dm.setup("fit")
    assert dm.classes == ["cat", "dog", "fox"] and dm.num_classes == 3
    assert [len(getattr(dm, f"{name}_set")) for name in SPLITS] == [12, 12, 12]
    assert dm.input_shape == (3, 16, 16)
    assert tuple(first_batch(dm)[0].shape) == (5, 3, 16, 16)
    assert split_labels(dm.val_set) == {0, 1, 2}


def test_imagefolder_single_layout_is_split_by_class(tmp_path: Path) -> None:
    write_image_folder(tmp_path, layout="single", per_class=10, size=20, mode="RGB")
    dm = ImageFolderDataModule(
        root=str(tmp_path), image_size=8, channels=1, val_fraction=0.2, test_fraction=0.2, batch_size=4
    )
    dm.setup("fit")
    sizes = [len(getattr(dm, f"{name}_set")) for name in SPLITS]
    assert sizes == [18, 6, 6]
    for name in SPLITS:
        assert split_labels(getattr(dm, f"{name}_set")) == {0, 1, 2}, f"{name} misses a class"
    all_indices = [set(getattr(dm, f"{name}_set").base.indices) for name in SPLITS]
    assert len(set().union(*all_indices)) == 30
    assert dm.input_shape == (1, 8, 8)
    assert tuple(first_batch(dm)[0].shape) == (4, 1, 8, 8)


def test_imagefolder_layout_errors(tmp_path: Path) -> None:
    write_image_folder(tmp_path, layout="splits")
    (tmp_path / "test").rename(tmp_path / "holdout")
    with pytest.raises(RecipeError, match="no test/"):
        ImageFolderDataModule(root=str(tmp_path))
    with pytest.raises(RecipeError, match="not a folder"):
        ImageFolderDataModule(root=str(tmp_path / "missing"))


# --- end to end through the CLI -----------------------------------------------------------------


def assert_valid_accuracy(results: dict[str, Any]) -> None:
    acc = results["metrics"]["test/acc"]
    assert 0.0 <= acc <= 1.0


def test_cli_trains_on_mnist_files(tmp_path: Path, run_dir: Path) -> None:
    root = write_mnist_idx(tmp_path / "mnist")
    results = train_ok_in_process(
        run_dir, "data=mnist", f"data.root={root}", "data.batch_size=16", "trainer.max_epochs=1"
    )
    assert_valid_accuracy(results)


@pytest.mark.usefixtures("cifar_md5_off")
def test_cli_trains_on_cifar10_files(tmp_path: Path, run_dir: Path) -> None:
    """In this process: torchvision's CIFAR10 compares every file with the md5 of the real download even
    with download=False, so home-made files load only with that one check off (cifar_md5_off)."""
    root = write_cifar10(tmp_path / "cifar10")
    results = train_ok_in_process(
        run_dir,
        "data=cifar10",
        f"data.root={root}",
        "data.num_workers=0",
        "model=lenet5",
        "data.batch_size=16",
        "trainer.max_epochs=1",
    )
    assert_valid_accuracy(results)


def test_cli_trains_on_an_image_folder(tmp_path: Path, run_dir: Path) -> None:
    root = write_image_folder(tmp_path / "images", layout="splits", per_class=6, size=24)
    results = train_ok_in_process(
        run_dir, "data=imagefolder", f"data.root={root}", "model=convnet", "data.batch_size=16", "trainer.max_epochs=1"
    )
    assert_valid_accuracy(results)
