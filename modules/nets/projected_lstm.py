"""LSTM with a projected hidden state (LSTMP, Sak et al. 2014) written step by step, so that it
exports to ONNX: torch.onnx's TorchScript exporter refuses nn.LSTM with `proj_size`, and its dynamo
exporter writes an ONNX LSTM node (which has no projection) that onnxruntime rejects."""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["ProjectedLSTM", "stepwise_lstmp"]


class ProjectedLSTM(nn.Module):
    """nn.LSTM(batch_first=True, proj_size=P)'s computation and parameters, under nn.LSTM's names
    (`weight_ih_l0`, `weight_hh_l0`, `bias_ih_l0`, `bias_hh_l0`, `weight_hr_l0`, ... per layer), so
    state dicts load either way. Same call: `(outputs, (h_n, c_n))`. `W x` is one matmul for all
    steps; the loop over time is unrolled when traced (the exported sequence length is fixed)."""

    def __init__(
        self, input_size: int, hidden_size: int, num_layers: int = 1, dropout: float = 0.0, proj_size: int = 0
    ) -> None:
        super().__init__()
        if not 0 < proj_size < hidden_size:
            raise ValueError(f"proj_size={proj_size} must be in (0, hidden_size={hidden_size})")
        self.input_size, self.hidden_size, self.num_layers = input_size, hidden_size, num_layers
        self.proj_size, self.dropout = proj_size, dropout
        for k in range(num_layers):
            width = input_size if k == 0 else proj_size
            shapes = {
                "weight_ih": (4 * hidden_size, width),
                "weight_hh": (4 * hidden_size, proj_size),
                "bias_ih": (4 * hidden_size,),
                "bias_hh": (4 * hidden_size,),
                "weight_hr": (proj_size, hidden_size),
            }
            for name, shape in shapes.items():
                self.register_parameter(f"{name}_l{k}", nn.Parameter(torch.empty(shape)))
        self.reset_parameters()

    @classmethod
    def from_lstm(cls, lstm: nn.LSTM) -> ProjectedLSTM:
        """A copy of a batch-first, one-way nn.LSTM with `proj_size` (same weights)."""
        if not (lstm.batch_first and lstm.bias and lstm.proj_size and not lstm.bidirectional):
            raise ValueError("only a batch-first, one-way nn.LSTM with biases and proj_size > 0 converts")
        copy = cls(lstm.input_size, lstm.hidden_size, lstm.num_layers, lstm.dropout, lstm.proj_size)
        copy.load_state_dict(lstm.state_dict())
        return copy.to(next(lstm.parameters()).device)

    def reset_parameters(self) -> None:
        bound = 1 / math.sqrt(self.hidden_size)  # nn.LSTM's init
        for weight in self.parameters():
            nn.init.uniform_(weight, -bound, bound)

    def forward(
        self, x: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor] | None = None
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """x [B, L, in], state (h_0 [layers, B, P], c_0 [layers, B, H]) -> outputs [B, L, P], (h_n, c_n)."""
        return stepwise_lstmp(self, x, state)


def _layer(lstm: nn.Module, k: int, x: torch.Tensor, h: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, ...]:
    w_hh, w_hr = getattr(lstm, f"weight_hh_l{k}"), getattr(lstm, f"weight_hr_l{k}")
    inputs = x @ getattr(lstm, f"weight_ih_l{k}").T + getattr(lstm, f"bias_ih_l{k}") + getattr(lstm, f"bias_hh_l{k}")
    outputs = []
    for step in inputs.unbind(1):  # not inputs[:, t]: its backward writes a zero-filled [B, L, 4H] per step
        i, f, g, o = (step + h @ w_hh.T).chunk(4, dim=1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = (torch.sigmoid(o) * torch.tanh(c)) @ w_hr.T
        outputs.append(h)
    return torch.stack(outputs, 1), h, c


def stepwise_lstmp(
    lstm: nn.Module, x: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor] | None = None
) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
    """The LSTMP computation on the weights of `lstm` (a ProjectedLSTM, or a batch-first nn.LSTM with
    `proj_size`: the same parameter names). torch.compile fuses this loop's elementwise gates into one
    kernel per step, which beats nn.LSTM(proj_size)'s native path on CPU (docs/sequence.md#speed)."""
    if state is None:
        state = (
            x.new_zeros(lstm.num_layers, x.shape[0], lstm.proj_size),
            x.new_zeros(lstm.num_layers, x.shape[0], lstm.hidden_size),
        )
    hs, cs = [], []
    for k in range(lstm.num_layers):
        if k:
            x = nn.functional.dropout(x, lstm.dropout, lstm.training)
        x, h, c = _layer(lstm, k, x, state[0][k], state[1][k])
        hs.append(h)
        cs.append(c)
    return x, (torch.stack(hs), torch.stack(cs))
