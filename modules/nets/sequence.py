"""What the sequence nets share: reading `input_shape` (symbols or feature vectors per step) and the
block that keeps the last step's features for a sequence classifier."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["LastStep", "takes_tokens"]


def takes_tokens(input_shape: Sequence[int], model: str) -> bool:
    """True for symbols (`(seq_len,)`: a language model), False for feature vectors per step (`(L, F)`:
    a sequence classifier); anything else is an image this net cannot read."""
    if len(input_shape) in (1, 2):
        return len(input_shape) == 1
    raise ValueError(
        f"model={model} takes a sequence (data=pytext, textfile or digits_rows / data.as_sequence=true), "
        f"not images of shape {list(input_shape)}"
    )


class LastStep(nn.Module):
    """[B, L, D] -> [B, D]: the features after the whole sequence was read (a causal net's last step
    has seen every step)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, -1]
