"""Bit packing: b-bit integers stored b bits each, so stored bytes are real.

``pack_bits(values, bits)`` stores each value's low ``bits`` bits (two's complement for
signed values) little-endian within bytes: value i occupies bits [i*b, (i+1)*b) of the
bit stream, byte 0 holding the lowest bits.  For b = 4 that is two values per byte, low
nibble first; for b = 2 four per byte.  ``unpack_bits`` restores the exact values, sign
extended when ``signed``.  Stored size: ceil(n * b / 8) bytes.
"""

from __future__ import annotations

import numpy as np

from .._validation import check_array, check_int
from ..errors import ArgumentError


def packed_nbytes(n: int, bits: int) -> int:
    return (n * bits + 7) // 8


def pack_bits(values, bits: int) -> np.ndarray:
    """Pack an int8/uint8/int16/uint16 array (any shape, read in C order) into uint8."""
    values = check_array(values, "values", dtypes=[np.int8, np.uint8, np.int16, np.uint16])
    bits = check_int(bits, "bits", min_value=1, max_value=16)
    v = values.reshape(-1).astype(np.int64)
    signed = values.dtype.kind == "i"
    lo, hi = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
    if v.size and (v.min() < lo or v.max() > hi):
        raise ArgumentError(
            f"values: expected {'signed' if signed else 'unsigned'} {bits}-bit values in [{lo}, {hi}], "
            f"got {v.min()}..{v.max()}"
        )
    u = (v & ((1 << bits) - 1)).astype(np.uint32)
    # bit j of value i, little-endian: a [n, bits] matrix flattened is the bit stream
    stream = ((u[:, None] >> np.arange(bits, dtype=np.uint32)) & 1).astype(np.uint8).reshape(-1)
    return np.packbits(stream, bitorder="little")


def unpack_bits(packed, bits: int, count: int, *, signed: bool, shape=None) -> np.ndarray:
    """Inverse of :func:`pack_bits`: ``count`` values as int8/uint8 (bits <= 8) or
    int16/uint16, reshaped to ``shape`` if given."""
    packed = check_array(packed, "packed", dtypes=[np.uint8], ndim=1)
    bits = check_int(bits, "bits", min_value=1, max_value=16)
    count = check_int(count, "count", min_value=0)
    if packed.size < packed_nbytes(count, bits):
        raise ArgumentError(
            f"packed: expected at least {packed_nbytes(count, bits)} bytes for {count} "
            f"{bits}-bit values, got {packed.size}"
        )
    stream = np.unpackbits(packed, bitorder="little")[: count * bits].reshape(count, bits)
    u = (stream.astype(np.int64) << np.arange(bits, dtype=np.int64)).sum(axis=1)
    if signed:
        u = np.where(u >= 2 ** (bits - 1), u - 2**bits, u)
    dtype = (np.int8 if signed else np.uint8) if bits <= 8 else (np.int16 if signed else np.uint16)
    out = u.astype(dtype)
    return out.reshape(shape) if shape is not None else out
