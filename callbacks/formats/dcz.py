"""The .dcz file: a net's state dict as Deep Compression ships it (Han et al., ICLR 2016).

Each tensor is stored in the smallest of the encodings that hold it exactly (raw, shared, sparse,
sign, ternary, live: callbacks/formats/tensor_encodings.py), so decoding gives the weights back bit
for bit.

File layout: b"DCZ1", u16 record count, then per record: u8 name length, name (the state-dict key
of the shipped net), u8 encoding, u8 ndim, u32 per dim, u32 payload length, payload. The file is
the concatenation of its records after the 6-byte header, so the bytes of each tensor are known
exactly (`encode_net`): the compression report counts them, and its total is the file's size.
"""

from __future__ import annotations

import struct
from pathlib import Path

import torch
from torch import nn

from callbacks.formats.tensor_encodings import DECODERS, ENCODINGS, decode_live, encode_live, encode_tensor
from callbacks.surgery.dead_units import feeds

__all__ = ["DczError", "decode", "encode_net", "load_into", "shipped_state", "write"]

MAGIC = b"DCZ1"
HEADER = len(MAGIC) + 2
TRAINING_ONLY = ("num_batches_tracked",)  # as in callbacks/formats/size_report.py: not shipped


class DczError(ValueError):
    """A file that is not a .dcz, or whose tensors do not fit the net."""


def shipped_state(net: nn.Module) -> dict[str, torch.Tensor]:
    """The tensors of `net` that ship (all of its state dict but training-only counters)."""
    return {k: v.detach().cpu() for k, v in net.state_dict().items() if k.rpartition(".")[2] not in TRAINING_ONLY}


def dead_unit_readers(net: nn.Module) -> dict[str, str]:
    """{bias key: key of the weight that reads its units} for each Linear whose units may die."""
    return {f"{p}.bias": f"{c}.weight" for p, producer, c, _ in feeds(net) if producer.bias is not None}


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
        live = encode_live(tensor.numpy(), reader, state[reader].numpy()) if reader in state else None
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
        state[key] = torch.from_numpy(decode_live(payload, shape, state))
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
