"""Canonical Huffman coding of small-alphabet integer streams (Deep Compression, sec. 4).

Code lengths come from the symbol frequencies (Huffman 1952; ties broken by symbol value
so the result is deterministic); codes are then assigned canonically (shorter codes first,
then by symbol), so a decoder needs only the code length of each symbol.  Bits are written
most significant first into bytes.

    encode(symbols, alphabet_size) -> (lengths uint8 [alphabet_size], payload uint8, n_bits)
    decode(lengths, payload, count) -> symbols

A stream with one distinct symbol gets a 1-bit code (a zero-length code cannot be read).
"""

from __future__ import annotations

import heapq

import numpy as np

from .._validation import check_array, check_int
from ..errors import ArgumentError, CorruptFileError

MAX_CODE_LENGTH = 32


def code_lengths(freqs) -> np.ndarray:
    """Huffman code length per symbol (0 for symbols that never occur)."""
    freqs = np.asarray(freqs, np.int64)
    present = np.flatnonzero(freqs)
    lengths = np.zeros(freqs.size, np.uint8)
    if present.size == 0:
        return lengths
    if present.size == 1:
        lengths[present[0]] = 1
        return lengths
    # heap of (weight, tie-break, symbols in this subtree); merging adds one bit to each
    heap = [(int(freqs[s]), int(s), [int(s)]) for s in present]
    heapq.heapify(heap)
    depth = np.zeros(freqs.size, np.int64)
    while len(heap) > 1:
        w1, t1, s1 = heapq.heappop(heap)
        w2, t2, s2 = heapq.heappop(heap)
        for s in s1 + s2:
            depth[s] += 1
        heapq.heappush(heap, (w1 + w2, min(t1, t2), s1 + s2))
    if depth.max() > MAX_CODE_LENGTH:
        raise ArgumentError(f"symbols: code lengths above {MAX_CODE_LENGTH} bits (too skewed a distribution)")
    lengths[:] = depth
    return lengths


def canonical_codes(lengths) -> np.ndarray:
    """Canonical code of each symbol (as an integer of ``lengths[s]`` bits)."""
    lengths = np.asarray(lengths, np.int64)
    codes = np.zeros(lengths.size, np.int64)
    order = sorted((int(l), s) for s, l in enumerate(lengths) if l > 0)
    code, prev = 0, 0
    for i, (l, s) in enumerate(order):
        if i:
            code = (code + 1) << (l - prev)
        else:
            code = 0
        codes[s] = code
        prev = l
    return codes


def encode(symbols, alphabet_size: int):
    """Huffman-code integer ``symbols`` in [0, alphabet_size)."""
    symbols = check_array(symbols, "symbols", ndim=1)
    alphabet_size = check_int(alphabet_size, "alphabet_size", min_value=1)
    if symbols.dtype.kind not in "iu":
        raise ArgumentError(f"symbols: expected integers, got dtype {symbols.dtype.name}")
    s = symbols.astype(np.int64)
    if s.size and (s.min() < 0 or s.max() >= alphabet_size):
        raise ArgumentError(f"symbols: expected values in [0, {alphabet_size}), got {s.min()}..{s.max()}")
    lengths = code_lengths(np.bincount(s, minlength=alphabet_size))
    codes = canonical_codes(lengths)
    ln = lengths.astype(np.int64)[s]
    cd = codes[s]
    n_bits = int(ln.sum())
    # expand each code to its bits, most significant first, vectorised over the stream:
    # column j holds bit (l - 1 - j) of a code of length l, for j < l
    maxl = int(ln.max()) if s.size else 0
    j = np.arange(maxl)[None, :]
    valid = j < ln[:, None]
    bits = (cd[:, None] >> np.maximum(ln[:, None] - 1 - j, 0)) & 1
    stream = bits[valid].astype(np.uint8)
    return lengths, np.packbits(stream), n_bits


def decode(lengths, payload, count: int) -> np.ndarray:
    """Inverse of :func:`encode`; refuses a payload that runs out (or hits an invalid code)
    before ``count`` symbols are decoded (CorruptFileError).  Bits after the last symbol
    (the final byte's padding) are not read."""
    lengths = check_array(lengths, "lengths", dtypes=[np.uint8], ndim=1).astype(np.int64)
    payload = check_array(payload, "payload", dtypes=[np.uint8], ndim=1)
    count = check_int(count, "count", min_value=0)
    if count == 0:
        return np.zeros(0, np.int64)
    codes = canonical_codes(lengths)
    table = {(int(lengths[s]), int(codes[s])): s for s in np.flatnonzero(lengths)}
    if not table:
        raise CorruptFileError("lengths: no symbol has a code, but symbols were expected")
    bits = np.unpackbits(payload)
    out = np.empty(count, np.int64)
    code = length = 0
    i = 0
    for b in bits:
        code = (code << 1) | int(b)
        length += 1
        sym = table.get((length, code))
        if sym is not None:
            out[i] = sym
            i += 1
            code = length = 0
            if i == count:
                return out
        elif length > MAX_CODE_LENGTH:
            break
    raise CorruptFileError(f"payload: decoded {i} of {count} symbols before the data ran out or went invalid")
