"""LSTM over a sequence: a language model over symbols (logits for the next symbol at every step)
or a classifier over feature vectors per step (logits from the last step)."""

from __future__ import annotations

import copy
from collections import OrderedDict
from collections.abc import Sequence

import torch
from torch import nn
from typing_extensions import override

from modules.nets.projected_lstm import ProjectedLSTM, stepwise_lstmp
from modules.nets.sequence import LastStep, takes_tokens
from modules.nets.shared_gate_lstm import SharedGateLSTM

__all__ = ["LSTMOutputs", "ProjectedOutputs", "SequenceLSTM", "SharedGateOutputs", "compiles_stepwise", "exportable"]


class _OutputsOnly:
    """A recurrent layer as a block of an nn.Sequential: the outputs of every step, no final state."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x)[0]  # type: ignore[misc]


class LSTMOutputs(_OutputsOnly, nn.LSTM):
    """nn.LSTM (batch first; with `proj_size`, the LSTMP of Sak et al. 2014) returning its outputs.
    Compiled (`model.compile=true`), an LSTMP runs the step-by-step loop on the same weights instead:
    Inductor fuses its gates and beats torch's native LSTMP path, which oneDNN does not cover."""

    @override
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.proj_size and torch.compiler.is_compiling():  # traced only where dynamo's allow_rnn is on
            return stepwise_lstmp(self, x)[0]
        return super().forward(x)


class SharedGateOutputs(_OutputsOnly, SharedGateLSTM):
    """The gate-shared LSTM (modules/nets/shared_gate_lstm.py) returning its outputs."""


class ProjectedOutputs(_OutputsOnly, ProjectedLSTM):
    """The step-by-step LSTMP (modules/nets/projected_lstm.py) returning its outputs."""


def compiles_stepwise(net: nn.Module) -> bool:
    """Whether `net` has an LSTMP block, which torch.compile should trace step by step: TorchDynamo
    runs every nn.LSTM eagerly unless `torch._dynamo.config.allow_rnn` is on."""
    return any(isinstance(m, LSTMOutputs) and m.proj_size for m in net.modules())


def exportable(net: nn.Module) -> nn.Module:
    """`net`, or a copy of it whose nn.LSTM blocks with `proj_size` are the step-by-step LSTMP with the
    same weights and names (the only form of LSTMP that exports to ONNX)."""
    projected = [name for name, child in net.named_children() if isinstance(child, LSTMOutputs) and child.proj_size]
    if not projected:
        return net
    net = copy.deepcopy(net)
    for name in projected:
        setattr(net, name, ProjectedOutputs.from_lstm(net.get_submodule(name)))
    return net


class SequenceLSTM(nn.Sequential):
    """[Embedding] -> LSTM layers -> [last step] -> Dropout -> Linear head (the block `head`).

    `input_shape` `(seq_len,)`: symbols, `num_classes` the vocabulary; `(L, F)`: F features per step.
    `proj_size` > 0 projects each layer's hidden state to that width (fewer recurrent weights);
    `share_gates` uses one input and one recurrent matrix for all four gates."""

    def __init__(
        self,
        input_shape: Sequence[int],
        num_classes: int,
        embed: int = 64,
        hidden: int = 256,
        layers: int = 1,
        dropout: float = 0.0,
        proj_size: int = 0,
        share_gates: bool = False,
    ) -> None:
        tokens = takes_tokens(input_shape, "lstm")
        for name, value in (("embed", embed), ("hidden", hidden), ("layers", layers)):
            if value < 1:
                raise ValueError(f"model.{name}={value} must be a positive integer")
        if not 0 <= dropout < 1:
            raise ValueError(f"model.dropout={dropout} must be in [0, 1)")
        if not 0 <= proj_size < hidden:
            raise ValueError(f"model.proj_size={proj_size} must be in [0, model.hidden={hidden}): 0 is no projection")
        if proj_size and share_gates:
            raise ValueError(f"model.proj_size={proj_size} with model.share_gates=true: pick one, set the other off")
        blocks: OrderedDict[str, nn.Module] = OrderedDict()
        if tokens:
            blocks["embed"] = nn.Embedding(num_classes, embed)
        width = embed if tokens else input_shape[1]
        between = dropout if layers > 1 else 0.0  # nn.LSTM warns about dropout on a single layer
        if share_gates:
            blocks["lstm"] = SharedGateOutputs(width, hidden, layers, between)
        else:
            blocks["lstm"] = LSTMOutputs(width, hidden, layers, batch_first=True, dropout=between, proj_size=proj_size)
        if not tokens:
            blocks["last"] = LastStep()
        blocks["dropout"] = nn.Dropout(dropout)
        blocks["head"] = nn.Linear(proj_size or hidden, num_classes)
        super().__init__(blocks)
        self.input_shape, self.num_classes = tuple(input_shape), num_classes
