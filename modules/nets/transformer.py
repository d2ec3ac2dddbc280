"""Decoder-only (causal) transformer over a sequence: a language model over symbols or a classifier
over feature vectors per step (logits from the last step)."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from modules.nets.sequence import LastStep, takes_tokens

__all__ = ["CausalSelfAttention", "CausalTransformer", "PositionalInput", "PreNormBlock"]


class PositionalInput(nn.Module):
    """Symbols (Embedding) or feature vectors (Linear) to `width`, plus a learned vector per position
    up to the context length."""

    def __init__(self, read: nn.Module, width: int, context: int, dropout: float) -> None:
        super().__init__()
        self.read, self.context = read, context
        self.positions = nn.Parameter(torch.zeros(context, width))
        nn.init.normal_(self.positions, std=0.02)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        length = x.shape[1]
        if length > self.context:
            raise ValueError(
                f"prompt of {length} symbols is longer than the transformer's context of seq_len={self.context}"
            )
        return self.dropout(self.read(x) + self.positions[:length])


class CausalSelfAttention(nn.Module):
    """Multi-head self-attention where step t sees steps <= t (scaled_dot_product_attention's
    `is_causal`); plain nn.Linear projections, so compression steps can factor them."""

    def __init__(self, width: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.qkv = nn.Linear(width, 3 * width)
        self.out = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, length, width = x.shape
        q, k, v = self.qkv(x).view(b, length, 3, self.heads, width // self.heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0, is_causal=True)
        return self.out(y.transpose(1, 2).reshape(b, length, width))


class PreNormBlock(nn.Module):
    """x + attention(LayerNorm(x)), then x + MLP(LayerNorm(x)) with a GELU hidden layer."""

    def __init__(self, width: int, heads: int, mlp_ratio: int, dropout: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(width)
        self.attn = CausalSelfAttention(width, heads, dropout)
        self.norm2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(
            nn.Linear(width, mlp_ratio * width), nn.GELU(), nn.Linear(mlp_ratio * width, width), nn.Dropout(dropout)
        )
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.dropout(self.attn(self.norm1(x)))
        return x + self.mlp(self.norm2(x))


class CausalTransformer(nn.Sequential):
    """PositionalInput -> pre-norm blocks -> LayerNorm -> [last step] -> Linear head (the block `head`).

    `input_shape` `(seq_len,)`: symbols, `num_classes` the vocabulary, context `seq_len`; `(L, F)`:
    F features per step, context L."""

    def __init__(
        self,
        input_shape: Sequence[int],
        num_classes: int,
        width: int = 128,
        layers: int = 2,
        heads: int = 4,
        mlp_ratio: int = 4,
        dropout: float = 0.0,
    ) -> None:
        tokens = takes_tokens(input_shape, "transformer")
        for name, value in (("width", width), ("layers", layers), ("heads", heads), ("mlp_ratio", mlp_ratio)):
            if value < 1:
                raise ValueError(f"model.{name}={value} must be a positive integer")
        if width % heads:
            raise ValueError(f"model.width={width} must be a multiple of model.heads={heads}")
        if not 0 <= dropout < 1:
            raise ValueError(f"model.dropout={dropout} must be in [0, 1)")
        read = nn.Embedding(num_classes, width) if tokens else nn.Linear(input_shape[1], width)
        blocks: OrderedDict[str, nn.Module] = OrderedDict(embed=PositionalInput(read, width, input_shape[0], dropout))
        for k in range(layers):
            blocks[f"block{k}"] = PreNormBlock(width, heads, mlp_ratio, dropout)
        blocks["norm"] = nn.LayerNorm(width)
        if not tokens:
            blocks["last"] = LastStep()
        blocks["head"] = nn.Linear(width, num_classes)
        super().__init__(blocks)
        self.input_shape, self.num_classes = tuple(input_shape), num_classes
        self.max_context = input_shape[0]  # learned positions end here: recipes.generate bounds a prompt by it
