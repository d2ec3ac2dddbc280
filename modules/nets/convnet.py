"""A plain conv-BN-ReLU net: stages of 3x3 convs, each stage ending in a 2x2 max-pool."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

__all__ = ["ConvNet", "conv_bn_relu"]


def conv_bn_relu(in_channels: int, out_channels: int) -> nn.Sequential:
    """3x3 'same' conv without bias (BatchNorm has one), BatchNorm, ReLU."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class ConvNet(nn.Sequential):
    """Stages of conv-BN-ReLU blocks + max-pool, then global average pool, dropout and a Linear head."""

    def __init__(
        self,
        input_shape: Sequence[int],
        num_classes: int,
        channels: Sequence[int] = (32, 64, 128),
        convs_per_stage: int = 1,
        dropout: float = 0.0,
    ) -> None:
        if not channels or any(c <= 0 for c in channels):
            raise ValueError(f"model.channels={list(channels)} must hold positive channel counts, e.g. [32,64]")
        if convs_per_stage < 1:
            raise ValueError(f"model.convs_per_stage={convs_per_stage} must be >= 1")
        stages: list[nn.Module] = []
        width = input_shape[0]
        for out in channels:
            blocks = [conv_bn_relu(width if i == 0 else out, out) for i in range(convs_per_stage)]
            stages.append(nn.Sequential(*blocks, nn.MaxPool2d(2, ceil_mode=True)))
            width = out
        head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout), nn.Linear(width, num_classes))
        super().__init__(*stages, head)
        self.input_shape, self.num_classes = tuple(input_shape), num_classes
