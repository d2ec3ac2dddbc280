"""Plain nn.Modules. Every net takes `input_shape` ((C, H, W) for images; (seq_len,) symbols or (L, F)
feature vectors for the sequence nets) and `num_classes` from the data module, keeps them as
attributes, and is an nn.Sequential of blocks (so stages can be cut for pipelining)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

__all__ = [
    "convnet",
    "dcgan",
    "gan_mlp",
    "gan_pair",
    "lenet",
    "lowrank_lstm",
    "lstm",
    "mlp",
    "projected_lstm",
    "resnet",
    "sequence",
    "shared_gate_lstm",
    "transformer",
    "output_layer",
    "head_block",
    "net_flops",
]

# Layers whose outputs can be a net's outputs (and that compression steps act on).
WEIGHTED = (nn.Linear, nn.Conv2d, nn.ConvTranspose2d)


def output_layer(net: nn.Module) -> str:
    """The dotted name of the layer whose outputs are the net's outputs: its last Linear / conv (a
    classifier's head layer, whose outputs are the classes). The one definition of "the head" that
    fine-tuning, hidden-node pruning and SVD factoring share."""
    names = [name for name, module in net.named_modules() if isinstance(module, WEIGHTED)]
    if not names:
        raise ValueError(f"{type(net).__name__} has no Linear or conv layer")
    return names[-1]


def head_block(net: nn.Module) -> str:
    """The name of the top-level block that holds the output layer (e.g. `5`, or a conv net's
    pool-flatten-dropout-Linear block `3`): what fine-tuning keeps, re-initializes or trains alone."""
    return output_layer(net).split(".")[0]


def net_flops(net: nn.Module, inputs: Any) -> int:
    """FLOPs of one forward of `net` on `inputs` (a tuple is positional, a dict keywords, else the one
    input), by torch's FLOP counter, in eval mode and without gradients so that nothing (BatchNorm
    statistics) changes. The counter has no formula for FFTs: a block-circulant layer counts its products."""
    training = net.training
    try:
        net.eval()
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            if isinstance(inputs, dict):
                net(**inputs)
            else:
                net(*inputs) if isinstance(inputs, tuple) else net(inputs)
    finally:
        net.train(training)
    return int(counter.get_total_flops())
