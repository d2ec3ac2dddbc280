"""Block-circulant layers (CirCNN, Ding et al. 2017): a weight matrix cut into b x b blocks, each block
circulant, so it is defined by one b-vector and multiplies by FFT in O(b log b) instead of O(b^2).

Block (i, j) is `W_ij[r, s] = c[i, j, (r - s) mod b]`, so `W_ij x_j` is the circular convolution of
`c[i, j]` and `x_j`: `irfft(rfft(c[i, j]) * rfft(x_j))`, and `y_i = irfft(sum_j rfft(c[i, j]) * rfft(x_j))`
(one inverse FFT per output block). Sizes that are not multiples of b are zero-padded and cropped.
No maintained PyTorch library trains these (see docs/compression.md), so they are written here on
`torch.fft`; autograd derives the backward.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn
from torch.nn import functional as F
from typing_extensions import override

__all__ = [
    "BlockCirculantConv2d",
    "BlockCirculantLinear",
    "check_block",
    "circulant_index",
    "dft_by_matmul",
    "dft_matrices",
    "fft_ops_in_export",
    "irfft_parts",
    "nearest_vectors",
    "rfft_parts",
    "spectral_matrix",
]


_fft_ops_in_export = False  # see `fft_ops_in_export`


def check_block(block: int, in_size: int, out_size: int, name: str = "block") -> None:
    """A block size must be at least 2 and fit the layer's larger side; `name` is the knob that set it."""
    if not 2 <= block <= max(in_size, out_size):
        raise ValueError(
            f"{name}={block} does not fit a {in_size} -> {out_size} layer: use a block in [2, {max(in_size, out_size)}]"
        )


def circulant_index(block: int, device: torch.device | None = None) -> torch.Tensor:
    """[b, b] indices `(r - s) mod b`: a circulant block is `c[circulant_index(b)]`."""
    r = torch.arange(block, device=device)
    return (r[:, None] - r[None, :]) % block


def dft_matrices(block: int, device: torch.device | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The real DFT of length b as two matrices, k = b // 2 + 1 frequencies: `x @ forward` [b, 2k] is
    `[Re | Im]` of rfft(x), `[Re | Im] @ inverse` [2k, b] is irfft (each frequency but 0 and b/2 counted
    twice, its conjugate's share)."""
    frequencies = block // 2 + 1
    steps = torch.outer(torch.arange(block, device=device), torch.arange(frequencies, device=device)) % block
    angle = (2 * math.pi / block) * steps.double()  # reduced mod b first: exact angles in [0, 2 pi)
    forward = torch.cat([torch.cos(angle), -torch.sin(angle)], 1)
    twice = torch.full((frequencies, 1), 2.0, device=device, dtype=torch.float64)
    twice[0] = 1.0
    if block % 2 == 0:
        twice[-1] = 1.0
    inverse = torch.cat([twice * torch.cos(angle.T), -twice * torch.sin(angle.T)], 0) / block
    return forward.float(), inverse.float()


def dft_by_matmul() -> bool:
    """Exported (torch.export, ONNX), the DFT is a matmul with the DFT matrices (unless within
    `fft_ops_in_export`): onnxruntime's `DFT` op ran slower than the dense layer it replaces, the MatMul
    form faster (scripts/bench_circulant.py measures both)."""
    return torch.compiler.is_exporting() and not _fft_ops_in_export


@contextmanager
def fft_ops_in_export() -> Iterator[None]:
    """Within it, an export writes torch.fft as its own ops (ONNX `DFT`) instead of MatMuls: for comparisons."""
    global _fft_ops_in_export
    _fft_ops_in_export = True
    try:
        yield
    finally:
        _fft_ops_in_export = False


def rfft_parts(x: torch.Tensor, dim: int) -> torch.Tensor:
    """rfft of `x` along `dim` as real numbers, a last dim (re, im); exported, see `dft_by_matmul`."""
    if not dft_by_matmul():
        return torch.view_as_real(torch.fft.rfft(x, dim=dim))
    forward = dft_matrices(x.shape[dim], x.device)[0].to(x.dtype)
    parts = (x.movedim(dim, -1) @ forward).unflatten(-1, (2, -1))  # [..., (re, im), k]
    return parts.transpose(-1, -2).movedim(-2, dim)  # [..., k at dim, ..., (re, im)]


def irfft_parts(parts: torch.Tensor, block: int, dim: int) -> torch.Tensor:
    """The inverse of `rfft_parts`: `parts` [..., k at `dim`, ..., (re, im)] -> length `block` at `dim`."""
    if not dft_by_matmul():
        return torch.fft.irfft(torch.view_as_complex(parts.contiguous()), n=block, dim=dim)
    inverse = dft_matrices(block, parts.device)[1].to(parts.dtype)
    rows = parts.movedim(dim, -2).transpose(-1, -2).flatten(-2)  # [..., (re, im) x k]
    return (rows @ inverse).movedim(-1, dim)


def expand(vectors: torch.Tensor, out_size: int, in_size: int) -> torch.Tensor:
    """The dense matrix the vectors [p, q, b, ...] stand for: [out, in, ...] (cropped from [p b, q b, ...])."""
    p, q, b = vectors.shape[:3]
    blocks = vectors[:, :, circulant_index(b, vectors.device)]  # [p, q, b, b, ...]
    dense = blocks.transpose(1, 2).reshape(p * b, q * b, *vectors.shape[3:])
    return dense[:out_size, :in_size]


def spectral_matrix(vectors: torch.Tensor) -> torch.Tensor:
    """Vectors [p, q, b, *taps] as one real matrix per frequency k, [k, 2 q T, 2 p]: with the input's
    spectrum as a row `[re | im]` over (q, T), `row @ M_k` is the output's `[re | im]` over p, the complex
    product `(a + ib)(c + id)` in real arithmetic (ONNX and onnxruntime have no complex tensors)."""
    p, q, b = vectors.shape[:3]
    spectrum = rfft_parts(vectors.reshape(p, q, b, -1), dim=2)  # [p, q, k, T, 2]
    real, imag = (spectrum[..., i].permute(2, 1, 3, 0).reshape(-1, q * spectrum.shape[3], p) for i in (0, 1))
    return torch.cat([torch.cat([real, imag], 2), torch.cat([-imag, real], 2)], 1)  # [k, 2 q T, 2 p]


def nearest_vectors(dense: torch.Tensor, block: int) -> torch.Tensor:
    """The block-circulant matrix nearest `dense` [out, in, ...] in Frobenius norm, as its vectors
    [p, q, b, ...]: each block's entries averaged along its circulant diagonals (entries in the zero
    padding do not count)."""
    out_size, in_size = dense.shape[:2]
    p, q = math.ceil(out_size / block), math.ceil(in_size / block)
    pad = [0, 0] * (dense.dim() - 2) + [0, q * block - in_size, 0, p * block - out_size]
    padded = F.pad(dense, pad).reshape(p, block, q, block, *dense.shape[2:]).transpose(1, 2)  # [p, q, b, b, ...]
    real = F.pad(torch.ones(out_size, in_size, device=dense.device), pad[-4:])
    real = real.reshape(p, block, q, block).transpose(1, 2)  # [p, q, b, b]: 1 where an entry is the layer's
    index = circulant_index(block, dense.device).flatten()
    sums = padded.new_zeros(p, q, block, *dense.shape[2:]).index_add_(2, index, padded.flatten(2, 3))
    counts = real.new_zeros(p, q, block).index_add_(2, index, real.flatten(2, 3))
    counts = counts.reshape(p, q, block, *([1] * (dense.dim() - 2)))
    return sums / counts.clamp(min=1)


class _BlockCirculant(nn.Module):
    """The vectors [p, q, b, *taps] of a block-circulant weight, their spectra cached in eval mode."""

    def __init__(self, in_size: int, out_size: int, block: int, taps: tuple[int, ...], bias: bool) -> None:
        super().__init__()
        check_block(block, in_size, out_size)
        self.in_size, self.out_size, self.block = in_size, out_size, block
        p, q = math.ceil(out_size / block), math.ceil(in_size / block)
        self.weight = nn.Parameter(torch.empty(p, q, block, *taps))
        self.bias = nn.Parameter(torch.empty(out_size)) if bias else None
        self._spectrum: tuple[int, torch.Tensor] | None = None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The dense layer's init (uniform in +-1/sqrt(fan_in)): each output sums in_size products."""
        fan_in = self.in_size * math.prod(self.weight.shape[3:])
        bound = 1 / math.sqrt(fan_in)
        nn.init.uniform_(self.weight, -bound, bound)
        if self.bias is not None:
            nn.init.uniform_(self.bias, -bound, bound)

    def spectrum(self) -> torch.Tensor:
        """The weights' spectra as one real matrix per frequency, [k, 2 q T, 2 p] (`spectral_matrix`); in
        eval mode without a graph to build, computed once per weight version."""
        weight = self.weight
        if self.training or not isinstance(weight, nn.Parameter) or torch.is_grad_enabled() and weight.requires_grad:
            return spectral_matrix(weight)  # a pruned or shared weight is a new tensor at every forward
        version = self.weight._version
        if self._spectrum is None or self._spectrum[0] != version or self._spectrum[1].device != self.weight.device:
            self._spectrum = (version, spectral_matrix(self.weight.detach()))
        return self._spectrum[1]

    @override
    def train(self, mode: bool = True) -> _BlockCirculant:
        self._spectrum = None
        return super().train(mode)

    def dense_weight(self) -> torch.Tensor:
        """The dense weight this layer stands for (what a test, an export fallback or a report needs)."""
        return expand(self.weight, self.out_size, self.in_size)

    def _mix(self, x: torch.Tensor) -> torch.Tensor:
        """x [N, in, T, L] -> [N, out, L]: each of the L positions' channels through the block-circulant
        matrix of every tap t, summed over the T taps (a Linear has T = L = 1)."""
        p, q, b = self.weight.shape[:3]
        n, taps, positions = x.shape[0], x.shape[2], x.shape[3]
        x = F.pad(x, (0, 0, 0, 0, 0, q * b - self.in_size)).reshape(n, q, b, taps, positions)
        spectrum_x = rfft_parts(x, dim=2)  # [N, q, k, T, L, (re, im)]
        rows = spectrum_x.permute(2, 0, 4, 5, 1, 3).reshape(-1, n * positions, 2 * q * taps)  # [k, N L, 2 q T]
        mixed = torch.bmm(rows, self.spectrum()).reshape(-1, n, positions, 2, p)  # [k, N, L, (re, im), p]
        y = irfft_parts(mixed.transpose(3, 4), b, dim=0)  # [b, N, L, p]
        return y.permute(1, 3, 0, 2).reshape(n, p * b, positions)[:, : self.out_size]


class BlockCirculantLinear(_BlockCirculant):
    """A Linear layer whose weight is a p x q grid of b x b circulant blocks: (p q b) parameters instead
    of (out x in), a b-fold compression for sizes that are multiples of b."""

    def __init__(self, in_features: int, out_features: int, block: int, bias: bool = True) -> None:
        super().__init__(in_features, out_features, block, (), bias)
        self.in_features, self.out_features = in_features, out_features

    @classmethod
    def from_linear(cls, linear: nn.Linear, block: int) -> BlockCirculantLinear:
        """The block-circulant layer nearest `linear` in Frobenius norm, with its bias."""
        layer = cls(linear.in_features, linear.out_features, block, bias=linear.bias is not None)
        layer.to(linear.weight.device)
        with torch.no_grad():
            layer.weight.copy_(nearest_vectors(linear.weight, block))
            if linear.bias is not None:
                layer.bias.copy_(linear.bias)
        return layer

    @override
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        y = self._mix(x.reshape(-1, self.in_features, 1, 1))[..., 0]
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*lead, self.out_features)

    @override
    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, block={self.block}"


class BlockCirculantConv2d(_BlockCirculant):
    """A Conv2d whose weight at each kernel tap is block-circulant in the channel dimensions (as CirCNN):
    the taps' channel mixing by FFT over the input's unfolded patches."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        block: int,
        stride: int = 1,
        padding: int = 0,
        bias: bool = True,
    ) -> None:
        super().__init__(in_channels, out_channels, block, (kernel_size, kernel_size), bias)
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride, self.padding = (kernel_size, kernel_size), stride, padding

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, block: int) -> BlockCirculantConv2d:
        """The block-circulant convolution nearest `conv` (square kernel, no groups or dilation)."""
        kh, kw = conv.kernel_size
        if kh != kw or conv.groups != 1 or conv.dilation != (1, 1) or conv.stride[0] != conv.stride[1]:
            raise ValueError(f"{conv} is not a square, ungrouped, undilated convolution: it has no circulant form here")
        if isinstance(conv.padding, str) or conv.padding[0] != conv.padding[1]:
            raise ValueError(f"{conv} has an uneven or named padding: it has no circulant form here")
        layer = cls(
            conv.in_channels, conv.out_channels, kh, block, conv.stride[0], conv.padding[0], conv.bias is not None
        )
        layer.to(conv.weight.device)
        with torch.no_grad():
            layer.weight.copy_(nearest_vectors(conv.weight, block))
            if conv.bias is not None:
                layer.bias.copy_(conv.bias)
        return layer

    @override
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, _, h, w = x.shape
        kh, kw = self.kernel_size
        out_h = (h + 2 * self.padding - kh) // self.stride + 1
        out_w = (w + 2 * self.padding - kw) // self.stride + 1
        if (kh, kw) == (1, 1) and self.padding == 0:
            patches = x[:, :, :: self.stride, :: self.stride].reshape(n, self.in_channels, 1, out_h * out_w)
        else:
            patches = F.unfold(x, self.kernel_size, padding=self.padding, stride=self.stride)
            patches = patches.reshape(n, self.in_channels, kh * kw, out_h * out_w)
        y = self._mix(patches).reshape(n, self.out_channels, out_h, out_w)
        if self.bias is not None:
            y = y + self.bias[:, None, None]
        return y

    @override
    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, block={self.block}, "
            f"stride={self.stride}, padding={self.padding}"
        )
