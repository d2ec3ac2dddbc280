"""Your own images in torchvision's ImageFolder layout: root/{train,val,test}/<class>/<image>, or
root/<class>/<image> split into train/val/test by stratified, seeded fractions."""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

from sklearn.model_selection import train_test_split
from torch.utils.data import Subset
from torchvision.datasets import ImageFolder
from typing_extensions import override

from recipes.data.base import ImageDataModule
from recipes.data.files import check_image, load_image
from recipes.errors import RecipeError

__all__ = ["ImageFolderDataModule", "SPLITS"]

SPLITS = ("train", "val", "test")


class ImageFolderDataModule(ImageDataModule):
    """Scans the folders and checks every image file at construction (see recipes/data/files.py), so a
    bad layout or a bad file fails at start-up, before any training, and names the file.

    A folder whose decoded images fit data.cache_mb is decoded once, when its first loader is made
    (in data.num_workers workers; a file that fails to decode is named then), and served from memory;
    a larger one is decoded image by image every epoch."""

    def __init__(
        self,
        root: str,
        image_size: int | None = 32,
        val_fraction: float = 0.1,
        test_fraction: float = 0.2,
        **common: Any,
    ) -> None:
        if image_size is None:
            raise ValueError("data.image_size=null: ImageFolder images are resized to one size, give it in px, e.g. 32")
        super().__init__(image_size=image_size, **common)
        self.native_channels = self.channels  # the loader converts every image to L or RGB
        self.native_size = image_size
        self.root = Path(root)
        if not self.root.is_dir():
            raise RecipeError(f"data.root={root} is not a folder: point it at an ImageFolder tree")
        loader = partial(load_image, mode="L" if self.channels == 1 else "RGB")
        present = [s for s in SPLITS if (self.root / s).is_dir()]
        if present:
            missing = [s for s in SPLITS if s not in present]
            if missing:
                raise RecipeError(
                    f"data.root={root} has {', '.join(present)}/ but no {', '.join(missing)}/: "
                    "give all of train/, val/, test/, or one folder of class folders"
                )
            self._folders = {s: self._scan(self.root / s, loader) for s in SPLITS}
            self._check_classes()
        else:
            if not (0 < val_fraction < 1 and 0 < test_fraction < 1 and val_fraction + test_fraction < 1):
                raise ValueError(
                    f"data.val_fraction={val_fraction} and data.test_fraction={test_fraction} "
                    "must be in (0, 1) and sum to less than 1"
                )
            self._folders = {"all": self._scan(self.root, loader)}
            self._fractions = (val_fraction, test_fraction)
        self.classes: list[str] = next(iter(self._folders.values())).classes
        self.num_classes = len(self.classes)

    @staticmethod
    def _scan(folder: Path, loader: Any) -> ImageFolder:
        try:
            found = ImageFolder(str(folder), loader=loader)
        except FileNotFoundError as err:
            raise RecipeError(f"no images in {folder}: {err} (expected {folder}/<class>/<image>.png)") from None
        for path, _ in found.samples:
            check_image(path)
        return found

    def _check_classes(self) -> None:
        expected = set(self._folders["train"].classes)
        for split in ("val", "test"):
            have = set(self._folders[split].classes)
            if have != expected:
                missing, extra = sorted(expected - have), sorted(have - expected)
                raise RecipeError(
                    f"data.root={self.root}: {split}/ has classes missing {missing} and extra {extra} "
                    "compared with train/; every split needs the same class folders"
                )

    def _split_single_folder(self) -> dict[str, Subset]:
        folder = self._folders["all"]
        val_fraction, test_fraction = self._fractions
        indices, targets = list(range(len(folder))), folder.targets
        try:
            rest, test = train_test_split(
                indices, test_size=test_fraction, stratify=targets, random_state=self.split_seed
            )
            train, val = train_test_split(
                rest,
                test_size=val_fraction / (1 - test_fraction),
                stratify=[targets[i] for i in rest],
                random_state=self.split_seed,
            )
        except ValueError as err:
            raise RecipeError(
                f"data.root={self.root} is too small to split by class ({err}); add images "
                "or give train/, val/, test/ folders"
            ) from None
        return {"train": Subset(folder, train), "val": Subset(folder, val), "test": Subset(folder, test)}

    @override
    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        splits = self._folders if "all" not in self._folders else self._split_single_folder()
        for name in SPLITS:
            setattr(self, f"{name}_set", self.image_split(splits[name], train=name == "train"))
