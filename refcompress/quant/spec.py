"""QuantSpec: how a tensor is quantized (bits, sign, symmetry, range, granularity).

A spec says *how*; :func:`refcompress.quant.choose_qparams` turns a spec and observed
statistics into the numbers (scale, zero point).  The integer range of a spec:

    signed,   full range : [-2^(b-1), 2^(b-1) - 1]
    signed,   narrow     : [-(2^(b-1) - 1), 2^(b-1) - 1]      (symmetric weights default)
    unsigned             : [0, 2^b - 1]   (narrow: [1, 2^b - 1] is not used: no benefit)

Values of 2 to 8 bits are held in int8 / uint8, 16 bits in int16 / uint16; sub-byte values
are packed for storage by :mod:`refcompress.quant.packing`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .._validation import check_choice, check_int
from ..errors import ArgumentError

GRANULARITIES = ("tensor", "channel", "group")


@dataclass(frozen=True)
class QuantSpec:
    """How to quantize a tensor.

    bits        : 2..8 or 16.
    signed      : int (True) or uint (False) storage.
    symmetric   : zero point fixed at 0 (signed) and scale from max|x| (True), or affine
                  scale and zero point from [min, max] (False).
    narrow_range: drop the most negative code so the range is symmetric (signed only).
    granularity : "tensor", "channel" (one scale per index of ``axis``) or "group" (one
                  scale per ``group_size`` consecutive elements along the last axis of each
                  row -- the input dimension of a [out, in] weight).
    axis        : channel axis for "channel" (default 0: output channels of a weight).
    group_size  : elements per group for "group".
    """

    bits: int = 8
    signed: bool = True
    symmetric: bool = True
    narrow_range: bool = True
    granularity: str = "tensor"
    axis: int = 0
    group_size: int | None = None

    def __post_init__(self):
        bits = check_int(self.bits, "bits", min_value=2, max_value=16)
        if 8 < bits < 16:
            raise ArgumentError(f"bits: expected 2..8 or 16, got {bits}")
        check_choice(self.granularity, "granularity", GRANULARITIES)
        if self.granularity == "group":
            if self.group_size is None:
                raise ArgumentError("group_size: expected a positive integer for granularity 'group', got None")
            check_int(self.group_size, "group_size", min_value=1)
        elif self.group_size is not None:
            raise ArgumentError(f"group_size: only used with granularity 'group', got {self.group_size}")
        if self.symmetric and not self.signed:
            raise ArgumentError("symmetric: a symmetric spec needs signed=True (zero point 0 in the middle)")

    @property
    def qmin(self) -> int:
        if not self.signed:
            return 0
        return -(2 ** (self.bits - 1)) + (1 if self.narrow_range else 0)

    @property
    def qmax(self) -> int:
        return 2 ** (self.bits - 1) - 1 if self.signed else 2**self.bits - 1

    @property
    def dtype(self) -> np.dtype:
        """The storage dtype of unpacked values."""
        if self.bits <= 8:
            return np.dtype(np.int8 if self.signed else np.uint8)
        return np.dtype(np.int16 if self.signed else np.uint16)

    def per_channel(self, axis: int = 0) -> "QuantSpec":
        return QuantSpec(self.bits, self.signed, self.symmetric, self.narrow_range, "channel", axis)


#: The defaults the library uses: symmetric narrow-range int8 weights (per output channel)
#: and affine uint8 activations (per tensor) -- the combination integer kernels expect.
WEIGHT_INT8 = QuantSpec(8, signed=True, symmetric=True, narrow_range=True, granularity="channel", axis=0)
ACT_UINT8 = QuantSpec(8, signed=False, symmetric=False, narrow_range=False, granularity="tensor")
