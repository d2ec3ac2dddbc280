"""The exact encodings of one tensor that a .dcz record holds (callbacks/formats/dcz.py), each an
encoder and its decoder:
- `raw`: its bytes at its dtype (biases, full-precision layers);
- `shared`: a codebook of its distinct values (fp32, at most 256) and Huffman-coded indices;
- `sparse`: a codebook of its distinct nonzero values, and for each nonzero (Han's sparse format)
  the Huffman-coded index of its value and the Huffman-coded gap to the previous nonzero in
  `pbits` bits; a gap longer than 2^pbits is bridged by filler entries whose value is zero (an
  extra codebook symbol); `pbits` is chosen per tensor;
- `sign`: one bit per weight and the positive value of each output channel (or one for the layer),
  for binary layers (+-alpha);
- `ternary`: two bits per weight and the two values (w_p, -w_n), for ternary layers;
- `live`: the bias of a Linear whose dead units (no nonzero weight in the next Linear, a tensor named
  in the record; callbacks/surgery/dead_units.py) hold exactly 0: only the live units' fp32 values.
Values are the tensor's own fp32 values, so decoding gives the weights back bit for bit. Each
encoder also gives the bytes the tensor would take after Han's pruning and quantization stages.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable

import numpy as np
import torch

from callbacks.formats import huffman

__all__ = ["DECODERS", "ENCODINGS", "Encoded", "decode_live", "encode_live", "encode_tensor", "sparse_entries"]

ENCODINGS = ("raw", "shared", "sparse", "sign", "ternary", "live")  # in the order of their codes in a file
DTYPES = ("float32", "float64", "float16", "int64", "int32", "uint8", "bool")
MAX_CODEBOOK = 256
Encoded = tuple[bytes, int, int]  # (payload, bytes after pruning only, bytes after quantization)


# --- encoders: each returns (payload, bytes after pruning only, bytes after quantization) or None ---


def _raw(array: np.ndarray) -> Encoded:
    payload = bytes([DTYPES.index(str(array.dtype))]) + array.tobytes()
    return payload, array.nbytes, array.nbytes


def _fixed_bits(alphabet: int) -> int:
    return max(1, math.ceil(math.log2(alphabet)))


def _shared(array: np.ndarray, codebook: np.ndarray) -> Encoded:
    symbols = np.searchsorted(codebook, array.ravel())
    lengths = huffman.code_lengths(symbols, len(codebook))
    payload = (
        bytes([len(codebook) - 1])
        + codebook.astype("<f4").tobytes()
        + lengths.tobytes()
        + huffman.encode(symbols, lengths)
    )
    quantized = 4 * len(codebook) + math.ceil(array.size * _fixed_bits(len(codebook)) / 8)
    return payload, array.nbytes, quantized


def sparse_entries(flat: np.ndarray, pbits: int) -> tuple[np.ndarray, np.ndarray]:
    """Han's relative positions: (gap symbols in [0, 2^pbits), and per entry the index of the nonzero it
    holds or -1 for a filler zero)."""
    span = 2**pbits
    positions = np.flatnonzero(flat)
    gaps = np.diff(positions, prepend=-1)
    fillers = (gaps - 1) // span
    last = gaps - fillers * span
    count = len(positions) + int(fillers.sum())
    symbols = np.full(count, span - 1, dtype=np.int64)  # a filler advances a whole span
    which = np.full(count, -1, dtype=np.int64)
    ends = np.cumsum(fillers + 1) - 1  # entry of each nonzero, after its fillers
    symbols[ends] = last - 1
    which[ends] = np.arange(len(positions))
    return symbols, which


def _sparse_at(array: np.ndarray, codebook: np.ndarray, pbits: int) -> Encoded:
    flat = array.ravel()
    gaps, which = sparse_entries(flat, pbits)
    values = np.searchsorted(codebook, flat[flat != 0])
    symbols = np.where(which >= 0, values[np.maximum(which, 0)], len(codebook))  # codebook size: filler zero
    value_lengths = huffman.code_lengths(symbols, len(codebook) + 1)
    gap_lengths = huffman.code_lengths(gaps, 2**pbits)
    value_stream = huffman.encode(symbols, value_lengths)
    payload = (
        bytes([len(codebook) - 1, pbits])
        + codebook.astype("<f4").tobytes()
        + struct.pack("<II", len(gaps), len(value_stream))
        + value_lengths.tobytes()
        + gap_lengths.tobytes()
        + value_stream
        + huffman.encode(gaps, gap_lengths)
    )
    pruned = math.ceil(len(gaps) * (32 + pbits) / 8)
    quantized = 4 * len(codebook) + math.ceil(len(gaps) * (_fixed_bits(len(codebook) + 1) + pbits) / 8)
    return payload, pruned, quantized


def _sparse(array: np.ndarray, codebook: np.ndarray) -> Encoded:
    return min((_sparse_at(array, codebook, pbits) for pbits in range(1, 9)), key=lambda e: len(e[0]))


def _sign(array: np.ndarray) -> Encoded | None:
    rows = array.reshape(array.shape[0], -1)
    scales = np.abs(rows).max(1)
    if not np.array_equal(np.abs(rows), np.broadcast_to(scales[:, None], rows.shape)) or (scales == 0).any():
        return None
    per_row = not (scales == scales[0]).all()
    stored = scales if per_row else scales[:1]
    payload = bytes([int(per_row)]) + stored.astype("<f4").tobytes() + np.packbits(rows.ravel() > 0).tobytes()
    return payload, array.nbytes, len(payload)


def _ternary(array: np.ndarray, codebook: np.ndarray) -> Encoded | None:
    positive, negative = codebook[codebook > 0], codebook[codebook < 0]
    if len(positive) != 1 or len(negative) != 1:
        return None
    flat = array.ravel()
    codes = np.where(flat > 0, 1, np.where(flat < 0, 2, 0)).astype(np.uint8)
    bits = np.unpackbits(codes[:, None], axis=1)[:, -2:]  # 2 bits per weight
    payload = np.array([positive[0], negative[0]], dtype="<f4").tobytes() + np.packbits(bits.ravel()).tobytes()
    return payload, array.nbytes, len(payload)


def encode_live(array: np.ndarray, consumer_key: str, consumer: np.ndarray) -> Encoded | None:
    """A bias whose dead units (all-zero columns of the next layer's weight) are exactly +0.0."""
    dead = (consumer == 0).all(0)
    if array.dtype != np.float32 or array.shape != dead.shape or array[dead].view(np.uint32).any():
        return None
    name = consumer_key.encode()
    payload = bytes([len(name)]) + name + array[~dead].astype("<f4").tobytes()
    return payload, 4 * int((~dead).sum()), 4 * int((~dead).sum())


def encode_tensor(tensor: torch.Tensor) -> tuple[str, Encoded]:
    """The smallest exact encoding of `tensor`: (its name, (payload, pruned-stage and quantized-stage bytes))."""
    array = tensor.numpy()
    candidates: dict[str, Encoded | None] = {"raw": _raw(array)}
    if array.dtype == np.float32 and array.ndim >= 1 and array.size:
        distinct = np.unique(array)
        nonzero = distinct[distinct != 0]
        if 0 < len(nonzero) <= MAX_CODEBOOK and len(distinct) <= MAX_CODEBOOK:
            candidates["shared"] = _shared(array, distinct)
        if 0 < len(nonzero) < MAX_CODEBOOK and (array == 0).any():
            candidates["sparse"] = _sparse(array, nonzero)
        if array.ndim >= 2:
            candidates["sign"] = _sign(array)
        candidates["ternary"] = _ternary(array, distinct)
    found = {name: enc for name, enc in candidates.items() if enc is not None}
    best = min(found, key=lambda name: len(found[name][0]))
    return best, found[best]


# --- decoders ---


def _decode_raw(payload: bytes, shape: tuple[int, ...]) -> np.ndarray:
    return np.frombuffer(payload[1:], dtype=DTYPES[payload[0]]).reshape(shape).copy()


def _codebook(payload: bytes, start: int) -> tuple[np.ndarray, int]:
    count = payload[0] + 1
    return np.frombuffer(payload, dtype="<f4", count=count, offset=start).astype(np.float32), start + 4 * count


def _decode_shared(payload: bytes, shape: tuple[int, ...]) -> np.ndarray:
    codebook, at = _codebook(payload, 1)
    lengths = np.frombuffer(payload, dtype=np.uint8, count=len(codebook), offset=at)
    symbols = huffman.decode(payload[at + len(codebook) :], lengths, math.prod(shape))
    return codebook[symbols].reshape(shape)


def _decode_sparse(payload: bytes, shape: tuple[int, ...]) -> np.ndarray:
    pbits = payload[1]
    codebook, at = _codebook(payload, 2)
    count, value_size = struct.unpack_from("<II", payload, at)
    at += 8
    value_lengths = np.frombuffer(payload, dtype=np.uint8, count=len(codebook) + 1, offset=at)
    gap_lengths = np.frombuffer(payload, dtype=np.uint8, count=2**pbits, offset=at + len(codebook) + 1)
    at += len(codebook) + 1 + 2**pbits
    symbols = huffman.decode(payload[at : at + value_size], value_lengths, count)
    gaps = huffman.decode(payload[at + value_size :], gap_lengths, count)
    flat = np.zeros(math.prod(shape), dtype=np.float32)
    values = np.append(codebook, np.float32(0))
    flat[np.cumsum(gaps + 1) - 1] = values[symbols]
    return flat.reshape(shape)


def _decode_sign(payload: bytes, shape: tuple[int, ...]) -> np.ndarray:
    rows = shape[0] if payload[0] else 1
    scales = np.frombuffer(payload, dtype="<f4", count=rows, offset=1).astype(np.float32)
    count = math.prod(shape)
    positive = np.unpackbits(np.frombuffer(payload, dtype=np.uint8, offset=1 + 4 * rows))[:count].astype(bool)
    magnitude = np.broadcast_to(scales[:, None], (shape[0], count // shape[0])).ravel()
    return np.where(positive, magnitude, -magnitude).astype(np.float32).reshape(shape)


def _decode_ternary(payload: bytes, shape: tuple[int, ...]) -> np.ndarray:
    positive, negative = np.frombuffer(payload, dtype="<f4", count=2).astype(np.float32)
    count = math.prod(shape)
    bits = np.unpackbits(np.frombuffer(payload, dtype=np.uint8, offset=8))[: 2 * count].reshape(count, 2)
    codes = bits[:, 0] * 2 + bits[:, 1]
    return np.select([codes == 1, codes == 2], [positive, negative], np.float32(0)).astype(np.float32).reshape(shape)


def decode_live(payload: bytes, shape: tuple[int, ...], state: dict[str, torch.Tensor]) -> np.ndarray:
    """A `live` bias, from the decoded `state` that holds the weight reading its units."""
    consumer = state[payload[1 : 1 + payload[0]].decode()].numpy()
    dead = (consumer == 0).all(0)
    values = np.zeros(shape, dtype=np.float32)
    values[~dead] = np.frombuffer(payload, dtype="<f4", offset=1 + payload[0])
    return values


# Every encoding but `live`, which needs another decoded tensor (decode_live).
DECODERS: dict[str, Callable[[bytes, tuple[int, ...]], np.ndarray]] = {
    "raw": _decode_raw,
    "shared": _decode_shared,
    "sparse": _decode_sparse,
    "sign": _decode_sign,
    "ternary": _decode_ternary,
}
