"""An LSTM whose four gates share one input and one recurrent matrix (about a quarter of nn.LSTM's
weights), written by hand."""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["SharedGateLSTM", "SharedGateLayer"]

GATES = 4  # input, forget, cell, output: the order of the rows of `bias` and `scale`


class SharedGateLayer(nn.Module):
    """One gate-shared LSTM layer over a whole batch-first sequence.

    nn.LSTM gives each gate its own W_g and U_g (4 H x (in + H) weights). Here all gates read ONE
    pre-activation `pre = W x_t + U h_{t-1}` (H x (in + H) weights) and differ only through a per-gate
    elementwise scale and bias: `gate_g = act_g(s_g * pre + b_g)`. Bias alone would make every gate's
    pre-activation the same up to a shift, so the input, forget and output gates would open and close
    together; the scale lets each gate weigh (and flip the sign of) each unit's evidence on its own.
    Parameters: H (in + H) + 8 H. The forget bias starts at 1 (remember by default, Jozefowicz et al.
    2015); scales start at 1, and the gates' different roles in the cell update set them apart.
    `W x` is one matmul for all steps; only `U h` runs step by step.
    """

    def __init__(self, input_size: int, hidden_size: int) -> None:
        super().__init__()
        self.input_size, self.hidden_size = input_size, hidden_size
        self.weight_ih = nn.Parameter(torch.empty(hidden_size, input_size))
        self.weight_hh = nn.Parameter(torch.empty(hidden_size, hidden_size))
        self.bias = nn.Parameter(torch.empty(GATES, hidden_size))
        self.scale = nn.Parameter(torch.empty(GATES, hidden_size))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        bound = 1 / math.sqrt(self.hidden_size)  # nn.LSTM's init
        nn.init.uniform_(self.weight_ih, -bound, bound)
        nn.init.uniform_(self.weight_hh, -bound, bound)
        with torch.no_grad():
            self.bias.zero_()
            self.bias[1].fill_(1.0)
            self.scale.fill_(1.0)

    def forward(
        self, x: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor] | None = None
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """x [B, L, in], state (h, c) each [B, H] -> outputs [B, L, H], last (h, c)."""
        if state is None:
            h = x.new_zeros(x.shape[0], self.hidden_size)
            c = x.new_zeros(x.shape[0], self.hidden_size)
        else:
            h, c = state
        inputs = x @ self.weight_ih.T  # [B, L, H], every step at once
        outputs = []
        for t in range(x.shape[1]):
            pre = (inputs[:, t] + h @ self.weight_hh.T).unsqueeze(1) * self.scale + self.bias  # [B, 4, H]
            i, f, g, o = pre.unbind(1)
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            h = torch.sigmoid(o) * torch.tanh(c)
            outputs.append(h)
        return torch.stack(outputs, 1), (h, c)


class SharedGateLSTM(nn.Module):
    """Stacked gate-shared layers with nn.LSTM's batch-first call: `(outputs, (h_n, c_n))`, h_n and c_n
    [layers, B, H]; dropout on each layer's outputs but the last (as nn.LSTM's `dropout`)."""

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, dropout: float = 0.0) -> None:
        super().__init__()
        self.input_size, self.hidden_size, self.num_layers = input_size, hidden_size, num_layers
        sizes = [input_size] + [hidden_size] * (num_layers - 1)
        self.layers = nn.ModuleList(SharedGateLayer(size, hidden_size) for size in sizes)
        self.dropout = nn.Dropout(dropout)

    def forward(
        self, x: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor] | None = None
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        hs, cs = [], []
        for k, layer in enumerate(self.layers):
            if k:
                x = self.dropout(x)
            x, (h, c) = layer(x, None if state is None else (state[0][k], state[1][k]))
            hs.append(h)
            cs.append(c)
        return x, (torch.stack(hs), torch.stack(cs))
