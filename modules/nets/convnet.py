"""A plain conv-BN-ReLU net: stages of 3x3 convs, each stage ending in a 2x2 max-pool."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from modules.nets.block_circulant import BlockCirculantConv2d, check_block

__all__ = ["ConvNet", "conv_bn_relu"]


def conv_bn_relu(in_channels: int, out_channels: int, circulant_block: int = 0) -> nn.Sequential:
    """3x3 'same' conv without bias (BatchNorm has one), BatchNorm, ReLU; with `circulant_block` > 0 the
    conv is block-circulant in its channels (CirCNN)."""
    conv = (
        BlockCirculantConv2d(in_channels, out_channels, 3, circulant_block, padding=1, bias=False)
        if circulant_block
        else nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False)
    )
    return nn.Sequential(
        conv,
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class ConvNet(nn.Sequential):
    """Stages of conv-BN-ReLU blocks + max-pool, then global average pool, dropout and a Linear head.

    `circulant_block=B` > 0 makes every conv after the first block-circulant in its channels (B x B
    circulant blocks per kernel tap: B times fewer weights); `circulant_first=true` the first conv too
    (it sees the image's few channels, so B must not exceed the larger of its channel counts)."""

    def __init__(
        self,
        input_shape: Sequence[int],
        num_classes: int,
        channels: Sequence[int] = (32, 64, 128),
        convs_per_stage: int = 1,
        dropout: float = 0.0,
        circulant_block: int = 0,
        circulant_first: bool = False,
    ) -> None:
        if not channels or any(c <= 0 for c in channels):
            raise ValueError(f"model.channels={list(channels)} must hold positive channel counts, e.g. [32,64]")
        if convs_per_stage < 1:
            raise ValueError(f"model.convs_per_stage={convs_per_stage} must be >= 1")
        if circulant_block < 0:
            raise ValueError(f"model.circulant_block={circulant_block} must be 0 (dense) or a block size >= 2")
        stages: list[nn.Module] = []
        width = input_shape[0]
        for stage, out in enumerate(channels):
            blocks = []
            for i in range(convs_per_stage):
                in_channels = width if i == 0 else out
                block = circulant_block if circulant_block and (stage or i or circulant_first) else 0
                if block:
                    check_block(block, in_channels, out, "model.circulant_block")
                blocks.append(conv_bn_relu(in_channels, out, block))
            stages.append(nn.Sequential(*blocks, nn.MaxPool2d(2, ceil_mode=True)))
            width = out
        head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout), nn.Linear(width, num_classes))
        super().__init__(*stages, head)
        self.input_shape, self.num_classes = tuple(input_shape), num_classes
