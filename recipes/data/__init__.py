"""LightningDataModules (images, and character-level text). Each exposes `input_shape` and `num_classes`
so nets are sized from the data."""

__all__ = [
    "base",
    "contract",
    "digits",
    "domains",
    "files",
    "folder",
    "mixing",
    "shift",
    "splits",
    "synthetic_files",
    "text",
    "transforms",
    "vision",
    "vocabulary",
]
