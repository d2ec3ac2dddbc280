"""Canonical Huffman coding of small-alphabet symbol streams (cluster indices, position gaps).

A canonical code is fully described by each symbol's code length, one byte per symbol, which is
what a .dcz file stores (libraries such as dahuffman store a frequency table or a pickled code,
several times larger than these streams' code tables at this model size). Code lengths come from
the textbook heap merge; codes are assigned in (length, symbol) order; bits are packed with numpy.
"""

from __future__ import annotations

import heapq
from collections import Counter

import numpy as np

__all__ = ["canonical_codes", "code_lengths", "coded_bits", "decode", "encode"]


def code_lengths(symbols: np.ndarray, alphabet: int) -> np.ndarray:
    """Huffman code length of each symbol in [0, alphabet) (0 for symbols that never occur; a stream
    of one distinct symbol gets a 1-bit code)."""
    counts = Counter(symbols.tolist())
    lengths = np.zeros(alphabet, dtype=np.uint8)
    if len(counts) == 1:
        lengths[next(iter(counts))] = 1
        return lengths
    heap = [(count, symbol, [symbol]) for symbol, count in counts.items()]
    heapq.heapify(heap)
    while len(heap) > 1:
        count_a, tie, group_a = heapq.heappop(heap)
        count_b, _, group_b = heapq.heappop(heap)
        for symbol in group_a + group_b:
            lengths[symbol] += 1
        heapq.heappush(heap, (count_a + count_b, tie, group_a + group_b))
    return lengths


def canonical_codes(lengths: np.ndarray) -> dict[int, str]:
    """The canonical code (as a bit string) of every symbol with a nonzero length."""
    codes, code, previous = {}, 0, 0
    for symbol in sorted((s for s in range(len(lengths)) if lengths[s]), key=lambda s: (lengths[s], s)):
        code <<= int(lengths[symbol]) - previous
        previous = int(lengths[symbol])
        codes[symbol] = format(code, f"0{previous}b")
        code += 1
    return codes


def encode(symbols: np.ndarray, lengths: np.ndarray) -> bytes:
    """`symbols` as packed bits of their canonical codes (the last byte zero-padded)."""
    codes = canonical_codes(lengths)
    bits = "".join(codes[s] for s in symbols.tolist())
    return np.packbits(np.frombuffer(bits.encode(), dtype=np.uint8) - ord("0")).tobytes()


def decode(data: bytes, lengths: np.ndarray, count: int) -> np.ndarray:
    """The first `count` symbols of `data`, encoded with the canonical code of `lengths`."""
    table = {(len(code), int(code, 2)): symbol for symbol, code in canonical_codes(lengths).items()}
    bits = np.unpackbits(np.frombuffer(data, dtype=np.uint8)).tolist()
    out, code, length = [], 0, 0
    for bit in bits:
        code, length = (code << 1) | bit, length + 1
        symbol = table.get((length, code))
        if symbol is not None:
            out.append(symbol)
            code = length = 0
            if len(out) == count:
                break
    if len(out) != count:
        raise ValueError(f"Huffman stream holds {len(out)} symbols, expected {count}")
    return np.asarray(out, dtype=np.int64)


def coded_bits(symbols: np.ndarray, lengths: np.ndarray) -> int:
    """Bits of the encoded stream before padding."""
    return int(lengths[symbols].astype(np.int64).sum())
