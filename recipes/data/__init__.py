"""LightningDataModules. Each exposes `input_shape` and `num_classes` so nets are sized from the data."""
