"""Plain nn.Modules. Every net takes `input_shape` (C, H, W) and `num_classes` from the data module,
keeps them as attributes, and is an nn.Sequential of blocks (so stages can be cut for pipelining)."""
