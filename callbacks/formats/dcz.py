"""The .dcz file: a net's state dict as Deep Compression ships it (Han et al., ICLR 2016).

Each tensor is stored in the smallest of the encodings that hold it exactly:
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
Values are the tensor's own fp32 values, so decoding gives the weights back bit for bit.

File layout: b"DCZ1", u16 record count, then per record: u8 name length, name (the state-dict key
of the shipped net), u8 encoding, u8 ndim, u32 per dim, u32 payload length, payload. The file is
the concatenation of its records after the 6-byte header, so the bytes of each tensor are known
exactly (`record_bytes`): the compression report counts them, and its total is the file's size.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

from callbacks.formats import huffman
from callbacks.surgery.dead_units import feeds

MAGIC = b"DCZ1"
HEADER = len(MAGIC) + 2
ENCODINGS = ("raw", "shared", "sparse", "sign", "ternary", "live")
DTYPES = ("float32", "float64", "float16", "int64", "int32", "uint8", "bool")
TRAINING_ONLY = ("num_batches_tracked",)  # as in callbacks/formats/size_report.py: not shipped
MAX_CODEBOOK = 256


class DczError(ValueError):
    """A file that is not a .dcz, or whose tensors do not fit the net."""


def shipped_state(net: nn.Module) -> dict[str, torch.Tensor]:
    """The tensors of `net` that ship (all of its state dict but training-only counters)."""
    return {k: v.detach().cpu() for k, v in net.state_dict().items() if k.rpartition(".")[2] not in TRAINING_ONLY}


# --- encoders: each returns (payload, bytes after pruning only, bytes after quantization) or None ---

Encoded = tuple[bytes, int, int]


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


def _live(array: np.ndarray, consumer_key: str, consumer: np.ndarray) -> Encoded | None:
    """A bias whose dead units (all-zero columns of the next layer's weight) are exactly +0.0."""
    dead = (consumer == 0).all(0)
    if array.dtype != np.float32 or array.shape != dead.shape or array[dead].view(np.uint32).any():
        return None
    name = consumer_key.encode()
    payload = bytes([len(name)]) + name + array[~dead].astype("<f4").tobytes()
    return payload, 4 * int((~dead).sum()), 4 * int((~dead).sum())


def dead_unit_readers(net: nn.Module) -> dict[str, str]:
    """{bias key: key of the weight that reads its units} for each Linear whose units may die."""
    return {f"{p}.bias": f"{c}.weight" for p, producer, c, _ in feeds(net) if producer.bias is not None}


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


def _record(key: str, tensor: torch.Tensor, encoding: str, payload: bytes) -> bytes:
    name = key.encode()
    return (
        struct.pack("<B", len(name))
        + name
        + struct.pack("<BB", ENCODINGS.index(encoding), tensor.dim())
        + struct.pack(f"<{tensor.dim()}I", *tensor.shape)
        + struct.pack("<I", len(payload))
        + payload
    )


def encode_net(net: nn.Module) -> tuple[bytes, dict[str, int], dict[str, int]]:
    """(the .dcz bytes of `net`, bytes per state-dict key (the header counted with the first),
    bytes of the whole net after each of Han's stages: pruned, quantized, huffman)."""
    records, sizes, stages = [], {}, {"pruned": 0, "quantized": 0}
    state, readers = shipped_state(net), dead_unit_readers(net)
    for key, tensor in state.items():
        encoding, encoded = encode_tensor(tensor)
        reader = readers.get(key)
        live = _live(tensor.numpy(), reader, state[reader].numpy()) if reader in state else None
        if live is not None and len(live[0]) < len(encoded[0]):
            encoding, encoded = "live", live
        payload, pruned, quantized = encoded
        records.append(_record(key, tensor, encoding, payload))
        sizes[key] = len(records[-1]) + (HEADER if len(records) == 1 else 0)
        stages["pruned"] += pruned
        stages["quantized"] += quantized
    data = MAGIC + struct.pack("<H", len(records)) + b"".join(records)
    stages["huffman"] = len(data)
    return data, sizes, stages


# --- decoding ---


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


def _decode_live(payload: bytes, shape: tuple[int, ...], state: dict[str, torch.Tensor]) -> np.ndarray:
    consumer = state[payload[1 : 1 + payload[0]].decode()].numpy()
    dead = (consumer == 0).all(0)
    values = np.zeros(shape, dtype=np.float32)
    values[~dead] = np.frombuffer(payload, dtype="<f4", offset=1 + payload[0])
    return values


DECODERS: dict[str, Callable[[bytes, tuple[int, ...]], np.ndarray]] = {
    "raw": _decode_raw,
    "shared": _decode_shared,
    "sparse": _decode_sparse,
    "sign": _decode_sign,
    "ternary": _decode_ternary,
}


def decode(data: bytes) -> dict[str, torch.Tensor]:
    """The state dict a .dcz file holds."""
    if data[:4] != MAGIC:
        raise DczError("not a .dcz file (no DCZ1 header)")
    (count,) = struct.unpack_from("<H", data, 4)
    at, state, later, order = HEADER, {}, {}, []
    for _ in range(count):
        size = data[at]
        key = data[at + 1 : at + 1 + size].decode()
        at += 1 + size
        encoding, ndim = ENCODINGS[data[at]], data[at + 1]
        shape = struct.unpack_from(f"<{ndim}I", data, at + 2)
        at += 2 + 4 * ndim
        (length,) = struct.unpack_from("<I", data, at)
        payload = data[at + 4 : at + 4 + length]
        at += 4 + length
        order.append(key)
        if encoding == "live":  # needs the weight that reads it, which may come later in the file
            later[key] = (payload, tuple(shape))
            continue
        state[key] = torch.from_numpy(DECODERS[encoding](payload, tuple(shape)))
    for key, (payload, shape) in later.items():
        state[key] = torch.from_numpy(_decode_live(payload, shape, state))
    return {key: state[key] for key in order}  # in the file's order


def write(net: nn.Module, path: Path) -> dict[str, int]:
    """Write `net`'s .dcz to `path`; returns the bytes after each stage (pruned, quantized, huffman)."""
    data, _, stages = encode_net(net)
    path.write_bytes(data)
    return stages


def load_into(net: nn.Module, path: Path) -> nn.Module:
    """Load the weights of the .dcz at `path` into `net` (built from the same config); DczError when
    the file's tensors do not fit it."""
    try:
        state = decode(path.read_bytes())
    except (IndexError, struct.error, ValueError, KeyError) as err:
        raise DczError(f"{path} is not a readable .dcz file ({err})") from None
    expected = shipped_state(net)
    if set(state) != set(expected) or any(state[k].shape != expected[k].shape for k in state):
        first = sorted(set(state) ^ set(expected)) or [k for k in state if state[k].shape != expected[k].shape]
        raise DczError(
            f"{path} holds weights that do not fit this net (e.g. {first[0]}): use the checkpoint "
            "of the run that wrote it"
        )
    net.load_state_dict(state, strict=False)
    return net
