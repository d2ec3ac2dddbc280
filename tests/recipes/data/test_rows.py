"""Images read as sequences of their rows (data.as_sequence, data=digits_rows): the net is sized from
(H, C*W) and every split's batches reach it in that shape, after the training augmentation."""

from __future__ import annotations

from pathlib import Path

import torch

from recipes.assembly.tasks import build_datamodule
from recipes.data.base import as_rows
from recipes.data.digits import DigitsDataModule
from tests.helpers.build import compose_train, quiet_trainer
from tests.helpers.runs import train_ok_in_process


def test_digits_rows_batches_are_rows(tmp_path: Path) -> None:
    dm = build_datamodule(compose_train(tmp_path, "data=digits_rows", "data.batch_size=16"))
    assert isinstance(dm, DigitsDataModule) and dm.as_sequence
    assert dm.input_shape == (8, 8) and dm.image_shape == (1, 8, 8)
    dm.setup("fit")
    for loader in (dm.train_dataloader(), dm.val_dataloader()):
        images, labels = next(iter(loader))
        x, y = dm.on_after_batch_transfer((images, labels), 0)  # what Lightning hands the module
        assert x.shape == (16, 8, 8) and torch.equal(x, images[:, 0]) and y is labels


def test_rows_keep_channels_side_by_side_and_follow_augmentation(tmp_path: Path) -> None:
    images = torch.arange(2 * 3 * 4 * 5, dtype=torch.float32).view(2, 3, 4, 5)
    rows = as_rows(images)
    assert rows.shape == (2, 4, 15)
    assert torch.equal(rows[1, 2], torch.cat([images[1, c, 2] for c in range(3)]))
    normalize = {"mean": [0.3, 0.3, 0.3], "std": [0.4, 0.4, 0.4]}
    dm = DigitsDataModule(
        as_sequence=True, channels=3, image_size=12, batch_size=8, normalize=normalize, augment=[torch.neg]
    )
    assert dm.input_shape == (12, 36)
    dm.trainer = quiet_trainer(max_epochs=1)
    dm.trainer.training = True
    dm.setup("fit")
    images, labels = next(iter(dm.train_dataloader()))
    x, _ = dm.on_after_batch_transfer((images, labels), 0)
    assert torch.allclose(x, as_rows((-images - 0.3) / 0.4), atol=1e-6)  # augmented, normalized, then rows


def test_images_stay_images_by_default() -> None:
    dm = DigitsDataModule(batch_size=4)
    dm.setup("fit")
    batch = next(iter(dm.val_dataloader()))
    assert dm.input_shape == (1, 8, 8) and dm.on_after_batch_transfer(batch, 0) is batch


def test_cli_trains_a_net_on_digit_rows(run_dir: Path) -> None:
    """The whole run on rows: the net is sized from (8, 8), and its checkpoint records that shape."""
    results = train_ok_in_process(run_dir, "data=digits_rows", "model=mlp", "trainer.max_epochs=1")
    assert 0.0 <= results["metrics"]["test/acc"] <= 1.0
    ckpt = torch.load(next(run_dir.rglob("*.ckpt")), map_location="cpu", weights_only=True)
    assert ckpt["recipe"]["data"]["input_shape"] == [8, 8]
