"""An LSTM (or LSTMP) whose input and recurrent matrices are each a product of two thin matrices, so
the recurrence computes through the factors: what svd (callbacks/lowrank.py) puts in place of an
nn.LSTM. A net layer rather than a surgery artefact: it is a plain module that a net built from
config could hold, and the structure replay (callbacks/surgery/structure.py) only rebuilds it."""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch import nn

__all__ = ["FACTORS", "MATRICES", "LowRankLSTM"]

MATRICES = ("weight_ih", "weight_hh")  # the factorable matrices of each layer, as nn.LSTM names them
FACTORS = ("_a", "_b")  # W ~ A @ B: A [m, r] is `<matrix>_a`, B [r, n] is `<matrix>_b`


class LowRankLSTM(nn.Module):
    """nn.LSTM(batch_first=True[, proj_size]) returning only its outputs (as LSTMOutputs), with each
    matrix named in `ranks` (`weight_ih_l0`, `weight_hh_l1`, ...) stored as `A [4H, r] @ B [r, n]`
    (parameters `<name>_a`, `<name>_b`); the others, the biases and `weight_hr_l{k}` keep nn.LSTM's
    names. `x W_ih^T` is `(x B^T) A^T` for all steps at once; per step `h W_hh^T` is `(h B^T) A^T`:
    r (4H + n) multiply-adds per sample instead of 4H n, which is the saving."""

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        dropout: float = 0.0,
        proj_size: int = 0,
        ranks: Mapping[str, int] | None = None,
    ) -> None:
        super().__init__()
        self.input_size, self.hidden_size, self.num_layers = input_size, hidden_size, num_layers
        self.dropout, self.proj_size = dropout, proj_size
        ranks = dict(ranks or {})
        names = [f"{matrix}_l{k}" for k in range(num_layers) for matrix in MATRICES]
        unknown = set(ranks) - set(names)
        if unknown:
            raise ValueError(f"ranks name {sorted(unknown)}, which are not input or recurrent matrices of the LSTM")
        self.ranks = {name: ranks[name] for name in names if name in ranks}  # in layer order
        out = proj_size or hidden_size
        for k in range(num_layers):
            widths = {"weight_ih": input_size if k == 0 else out, "weight_hh": out}
            for matrix, width in widths.items():
                name = f"{matrix}_l{k}"
                if name in self.ranks:
                    rank = self.ranks[name]
                    self.register_parameter(f"{name}_a", nn.Parameter(torch.empty(4 * hidden_size, rank)))
                    self.register_parameter(f"{name}_b", nn.Parameter(torch.empty(rank, width)))
                else:
                    self.register_parameter(name, nn.Parameter(torch.empty(4 * hidden_size, width)))
            self.register_parameter(f"bias_ih_l{k}", nn.Parameter(torch.empty(4 * hidden_size)))
            self.register_parameter(f"bias_hh_l{k}", nn.Parameter(torch.empty(4 * hidden_size)))
            if proj_size:
                self.register_parameter(f"weight_hr_l{k}", nn.Parameter(torch.empty(proj_size, hidden_size)))
        self.reset_parameters()

    @classmethod
    def from_lstm(cls, lstm: nn.LSTM, ranks: Mapping[str, int]) -> LowRankLSTM:
        """`lstm` (batch-first, one-way, with biases) with each matrix in `ranks` replaced by its
        truncated SVD `W ~ (U_r S_r^1/2)(S_r^1/2 V_r^T)`; every other tensor copied."""
        if not (lstm.batch_first and lstm.bias and not lstm.bidirectional):
            raise ValueError("only a batch-first, one-way nn.LSTM with biases converts")
        weight = lstm.weight_ih_l0
        copy = cls(lstm.input_size, lstm.hidden_size, lstm.num_layers, lstm.dropout, lstm.proj_size, ranks)
        copy = copy.to(device=weight.device, dtype=weight.dtype)
        state = {}
        for name, tensor in lstm.state_dict().items():
            if name in copy.ranks:
                u, s, vh = torch.linalg.svd(tensor, full_matrices=False)
                root = s[: copy.ranks[name]].sqrt()
                state[f"{name}_a"] = u[:, : copy.ranks[name]] * root[None, :]
                state[f"{name}_b"] = root[:, None] * vh[: copy.ranks[name]]
            else:
                state[name] = tensor
        copy.load_state_dict(state)
        return copy

    def reset_parameters(self) -> None:
        bound = 1 / math.sqrt(self.hidden_size)  # nn.LSTM's init (of the factors: only a placeholder)
        for weight in self.parameters():
            nn.init.uniform_(weight, -bound, bound)

    def _times(self, name: str, x: torch.Tensor) -> torch.Tensor:
        """`x W^T` for the matrix `name`, through its factors when it has them."""
        if name in self.ranks:
            return (x @ getattr(self, f"{name}_b").T) @ getattr(self, f"{name}_a").T
        return x @ getattr(self, name).T

    def _layer(self, k: int, x: torch.Tensor) -> torch.Tensor:
        inputs = self._times(f"weight_ih_l{k}", x) + getattr(self, f"bias_ih_l{k}") + getattr(self, f"bias_hh_l{k}")
        h = x.new_zeros(x.shape[0], self.proj_size or self.hidden_size)
        c = x.new_zeros(x.shape[0], self.hidden_size)
        outputs = []
        for step in inputs.unbind(1):  # not inputs[:, t]: its backward writes a zero-filled [B, L, 4H] per step
            i, f, g, o = (step + self._times(f"weight_hh_l{k}", h)).chunk(4, dim=1)
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            h = torch.sigmoid(o) * torch.tanh(c)
            if self.proj_size:
                h = h @ getattr(self, f"weight_hr_l{k}").T
            outputs.append(h)
        return torch.stack(outputs, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, L, in] -> outputs [B, L, proj_size or hidden] (zero initial state, as in SequenceLSTM)."""
        for k in range(self.num_layers):
            if k:
                x = nn.functional.dropout(x, self.dropout, self.training)
            x = self._layer(k, x)
        return x
