"""torchvision's resnet18 (weights=None: nothing is downloaded), adapted to small images and any
channel count, and laid out as an nn.Sequential of its stages."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn
from torchvision.models import resnet18

__all__ = ["ResNet18"]


class ResNet18(nn.Sequential):
    """stem -> layer1..layer4 -> global average pool -> Linear head.

    small_input=True swaps the 7x7 stride-2 stem and its max-pool for a 3x3 stride-1 conv, the usual
    CIFAR adaptation: on 32x32 (or 8x8) images the ImageNet stem would throw away most pixels.
    """

    def __init__(self, input_shape: Sequence[int], num_classes: int, small_input: bool = True) -> None:
        net = resnet18(weights=None, num_classes=num_classes)
        channels = input_shape[0]
        if small_input:
            stem = nn.Sequential(nn.Conv2d(channels, 64, 3, stride=1, padding=1, bias=False), net.bn1, net.relu)
        else:
            conv = nn.Conv2d(channels, 64, 7, stride=2, padding=3, bias=False)
            stem = nn.Sequential(conv, net.bn1, net.relu, net.maxpool)
        head = nn.Sequential(net.avgpool, nn.Flatten(), net.fc)
        super().__init__(stem, net.layer1, net.layer2, net.layer3, net.layer4, head)
        self.input_shape, self.num_classes = tuple(input_shape), num_classes
