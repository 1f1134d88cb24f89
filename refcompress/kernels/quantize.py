"""Affine quantize / dequantize: the ONNX QuantizeLinear / DequantizeLinear rule.

Reference semantics (docs/semantics.md), element by element, in float32::

    q = saturate(round_half_to_even(x / s) + z)      x, s float32; q in [qmin, qmax]
    x_hat = (q - z) * s

* ``x / s`` is one correctly rounded float32 division (ONNX divides; multiplying by a
  precomputed 1/s would round differently).
* Ties round to even (np.rint), e.g. 0.5 -> 0, 1.5 -> 2, -2.5 -> -2.
* Saturation clamps to [qmin, qmax] (by default the storage type's range; narrow range or
  sub-byte bit widths pass a smaller one).  +Inf -> qmax, -Inf -> qmin.
* NaN quantizes as 0.0 does, to the zero point (ONNX leaves NaN undefined for integers;
  we define it rather than leave it to the hardware).
* Per-tensor: one scale and zero point.  Per-axis: ``scale`` and ``zero_point`` are 1-D
  of length ``x.shape[axis]``.
* Dequantize forms ``q - z`` exactly (in 64-bit integers), converts it to float32 and
  multiplies once: two roundings, the same in the reference and every C variant.

Reference: ONNX operator specs QuantizeLinear-21 / DequantizeLinear-21; Jacob et al.,
"Quantization and Training of Neural Networks for Efficient Integer-Arithmetic-Only
Inference", CVPR 2018, eq. (1).
"""

from __future__ import annotations

import math

import numpy as np

from .._validation import check_array, check_axis, check_int
from ..errors import ArgumentError, DTypeError, ShapeError
from . import _native
from ._registry import Op, check_rc, dispatch, register

#: Storage types quantize may produce, with their C type codes.
QUANT_DTYPES = {
    np.dtype(np.int8): 0,
    np.dtype(np.uint8): 1,
    np.dtype(np.int16): 2,
    np.dtype(np.uint16): 3,
}
_F32 = np.dtype(np.float32)

#: Types dequantize accepts (int32 too: dequantizing accumulators is common).
DEQUANT_DTYPES = {**QUANT_DTYPES, np.dtype(np.int32): 4}

__all__ = ["quantize", "dequantize", "quantize_rows", "ROWS_QMAX", "QUANT_DTYPES", "DEQUANT_DTYPES"]

#: quantize_rows: symmetric narrow-range int8, q in [-ROWS_QMAX, ROWS_QMAX].
ROWS_QMAX = 127


# ---- validation (shared by both ops) -----------------------------------------------------


#: (min, max) of each integer type the ops take (np.iinfo costs ~0.5 us a call)
_TYPE_RANGE = {dt: (int(np.iinfo(dt).min), int(np.iinfo(dt).max)) for dt in DEQUANT_DTYPES}

#: per-tensor (scale, zero point) arrays already made, read-only, by (float32 scale, zero
#: point): a layer quantizes with the same pair on every call
_PER_TENSOR = {}


def _qparams(scale, zero_point, shape, axis, lo, hi):
    """Validate scale / zero point against ``shape`` and ``axis``; return
    (axis or None, scale float32 1-D, zero_point int32 1-D)."""
    if (axis is None and isinstance(scale, (float, np.floating))
            and isinstance(zero_point, (int, np.integer)) and type(zero_point) is not bool):
        # The quantize / dequantize stubs' call, once per layer call: the same checks and
        # errors on plain (Python or NumPy) numbers, without the array round trips (~8 us).
        s = np.float32(scale)
        if not (math.isfinite(s) and s > 0):
            raise ArgumentError(f"scale: expected finite values > 0 (as float32), got {s!r}")
        if not lo <= zero_point <= hi:
            raise ArgumentError(f"zero_point: expected values in [{lo}, {hi}], got {zero_point}")
        key = (float(s), int(zero_point))
        pair = _PER_TENSOR.get(key)
        if pair is None:
            if len(_PER_TENSOR) >= 1024:  # a bound on what many distinct calls can keep
                _PER_TENSOR.clear()
            # views of immutable bytes: read-only for good (an owning array could be made
            # writeable again)
            pair = (np.frombuffer(np.array([s], np.float32).tobytes(), np.float32),
                    np.frombuffer(np.array([zero_point], np.int32).tobytes(), np.int32))
            _PER_TENSOR[key] = pair
        return (None,) + pair
    if axis is None:
        n = 1
    else:
        axis = check_axis(axis, len(shape))
        n = shape[axis]
    s = np.asarray(scale)
    if s.dtype.kind not in "fiu":
        raise DTypeError(f"scale: expected a real number or float array, got dtype {s.dtype.name}")
    want = "a scalar" if axis is None else f"shape ({n},) (x.shape[{axis}])"
    if axis is None and s.size != 1 or axis is not None and s.shape not in ((n,),):
        raise ShapeError(f"scale: expected {want}, got shape {s.shape}")
    # The scale is float32 by definition (ONNX y_scale); a float64 value is rounded to it.
    s = s.astype(np.float32).reshape(-1)
    if not np.all(np.isfinite(s) & (s > 0)):
        bad = s[~(np.isfinite(s) & (s > 0))][0]
        raise ArgumentError(f"scale: expected finite values > 0 (as float32), got {bad!r}")
    z = np.asarray(zero_point)
    if z.dtype.kind not in "iu":
        raise DTypeError(f"zero_point: expected integers, got dtype {z.dtype.name}")
    if axis is None and z.size != 1 or axis is not None and z.shape not in ((n,), ()):
        raise ShapeError(f"zero_point: expected {want}, got shape {z.shape}")
    z = np.broadcast_to(z.astype(np.int64).reshape(-1), (n,))
    if np.any(z < lo) or np.any(z > hi):
        raise ArgumentError(f"zero_point: expected values in [{lo}, {hi}], got {z[(z < lo) | (z > hi)][0]}")
    return axis, np.ascontiguousarray(s), np.ascontiguousarray(z, dtype=np.int32)


def _split(shape, axis):
    """(outer, channels, inner) of a C-contiguous array viewed around ``axis``."""
    if axis is None:
        return 1, 1, math.prod(shape)
    outer = math.prod(shape[:axis])
    inner = math.prod(shape[axis + 1:])
    return outer, shape[axis], inner


def _bcast(v, ndim, axis):
    """Reshape per-channel v so it broadcasts along ``axis`` of an ndim array."""
    if axis is None:
        return v.reshape(())
    shape = [1] * ndim
    shape[axis] = v.size
    return v.reshape(shape)


# ---- references --------------------------------------------------------------------------


def round_saturate(v, zero_point, qmin, qmax, dtype):
    """The one rounding rule of the library (NumPy form; rc_round_saturate in C):
    rint(v) (half to even), NaN -> 0, clamp to [qmin - z, qmax - z], add z, store as dtype.

    Clamping before adding z keeps the addition on small exact integers, so it cannot
    round.  ``v`` is float32; ``zero_point`` broadcasts against it."""
    z = np.asarray(zero_point, dtype=np.int64)
    r = np.rint(v)
    r = np.where(np.isnan(r), np.float32(0), r)
    r = np.clip(r, (qmin - z).astype(np.float32), (qmax - z).astype(np.float32))
    return (r.astype(np.int64) + z).astype(dtype)


def quantize_reference(x, scale, zero_point, axis, dtype, qmin, qmax):
    """NumPy definition: q = clip(rint(x / s), qmin - z, qmax - z) + z, NaN -> z."""
    s = _bcast(scale, x.ndim, axis)
    z = _bcast(zero_point, x.ndim, axis)
    with np.errstate(over="ignore", invalid="ignore"):  # overflow to +-Inf then saturates
        v = x / s  # float32 / float32: one IEEE division (ONNX divides; 1/s would differ)
    return round_saturate(v, z, qmin, qmax, dtype)


def dequantize_reference(q, scale, zero_point, axis):
    """NumPy definition: x = float32(q - z) * s, with q - z exact in int64."""
    s = _bcast(scale, q.ndim, axis)
    z = _bcast(zero_point, q.ndim, axis).astype(np.int64)
    return (q.astype(np.int64) - z).astype(np.float32) * s


def _raise_nonfinite_row(x, inv_smooth, row):
    """The error for a row whose max |x_ij * inv_smooth_j| is NaN or Inf (every backend
    finds it in the row maximum it computes anyway: no extra pass over x)."""
    if inv_smooth is None or not np.all(np.isfinite(x[row])):
        raise ArgumentError(f"x: expected finite values, got NaN or Inf in row {row}")
    raise ArgumentError(f"x * inv_smooth: row {row} overflows float32 (x is finite there; "
                        f"expected products within float32 range)")


def quantize_rows_reference(x, inv_smooth):
    """NumPy definition of quantize_rows (x [M, K] float32 C-contiguous, inv_smooth [K] or
    None); returns (q int8 [M, K], scale float32 [M]).

    xs = x * inv_smooth (one float32 multiply each), a_i = max_j |xs_ij|, s_i = a_i / 127
    (one float32 division; 1 where it is 0), q = quantize_reference(xs, s, 0, axis=0,
    int8, -127, 127): the very rule of quantize."""
    m, k = x.shape
    if inv_smooth is None:
        xs = x
    else:
        with np.errstate(over="ignore", invalid="ignore"):  # refused just below
            xs = x * inv_smooth
    a = np.max(np.abs(xs), axis=1, initial=np.float32(0))
    bad = ~np.isfinite(a)
    if np.any(bad):
        _raise_nonfinite_row(x, inv_smooth, int(np.flatnonzero(bad)[0]))
    s = a / np.float32(ROWS_QMAX)  # float32 / float32: one IEEE division (may underflow to 0)
    s = np.where(s == 0, np.float32(1), s).astype(np.float32)
    q = quantize_reference(xs, s, np.zeros(m, np.int32), 0, np.int8, -ROWS_QMAX, ROWS_QMAX)
    return q, s


# ---- C implementations ------------------------------------------------------------------


def _quantize_c(x, scale, zero_point, axis, dtype, qmin, qmax, *, isa, threads):
    out = np.empty(x.shape, dtype=dtype)
    outer, channels, inner = _split(x.shape, axis)
    rc = _native.lib.rc_quantize_f32(
        _native.ptr("float *", x), _native.ptr("void *", out), QUANT_DTYPES[np.dtype(dtype)],
        outer, channels, inner,
        _native.ptr("float *", scale), _native.ptr("int *", zero_point),
        qmin, qmax, isa, threads,
    )
    check_rc(rc, "quantize")
    return out


def _dequantize_c(q, scale, zero_point, axis, *, isa, threads):
    out = np.empty(q.shape, dtype=np.float32)
    outer, channels, inner = _split(q.shape, axis)
    rc = _native.lib.rc_dequantize_f32(
        _native.ptr("void *", q), DEQUANT_DTYPES[q.dtype], _native.ptr("float *", out),
        outer, channels, inner,
        _native.ptr("float *", scale), _native.ptr("int *", zero_point), isa, threads,
    )
    check_rc(rc, "dequantize")
    return out


def _quantize_rows_c(x, inv_smooth, *, isa, threads):
    m, k = x.shape
    q = np.empty((m, k), dtype=np.int8)
    s = np.empty(m, dtype=np.float32)
    bad = _native.ffi.new("long long *")
    rc = _native.lib.rc_quantize_rows_f32(
        _native.ptr("float *", x),
        _native.ffi.NULL if inv_smooth is None else _native.ptr("float *", inv_smooth),
        m, k, _native.ptr("int8_t *", q), _native.ptr("float *", s), bad, isa, threads,
    )
    if rc == _native.RC_ERR_NONFINITE:
        _raise_nonfinite_row(x, inv_smooth, int(bad[0]))
    check_rc(rc, "quantize_rows")
    return q, s


_VARIANTS = ("portable", "avx2", "avx512")
register(Op("quantize", quantize_reference, _quantize_c, _VARIANTS, doc=__doc__))
register(Op("dequantize", dequantize_reference, _dequantize_c, _VARIANTS, doc=__doc__))
register(Op("quantize_rows", quantize_rows_reference, _quantize_rows_c, _VARIANTS,
            doc="dynamic per-row symmetric int8 (see quantize_rows)"))


# ---- public entry points -----------------------------------------------------------------


def quantize(x, scale, zero_point=0, *, axis=None, dtype=np.int8, qmin=None, qmax=None):
    """Quantize float32 ``x`` to integers: q = saturate(round_half_even(x / s) + z).

    Parameters
    ----------
    x : ndarray of float32, any shape (any memory layout).
    scale : float, or 1-D float array of length ``x.shape[axis]`` when ``axis`` is given.
        Stored and used as float32 (the ONNX definition); must be finite and > 0.
    zero_point : int, or 1-D int array like ``scale``; within [qmin, qmax].
    axis : None for per-tensor, or the channel axis for per-axis quantization.
    dtype : int8, uint8, int16 or uint16 (the storage type).
    qmin, qmax : saturation bounds, default the full range of ``dtype``.  Narrow-range
        symmetric int8 uses qmin=-127; b-bit values stored in int8 use
        [-2**(b-1), 2**(b-1) - 1].

    Returns
    -------
    ndarray of ``dtype`` with the shape of ``x`` (C-contiguous).  NaN maps to the zero
    point, +-Inf to qmax / qmin.  Bit-exact across the NumPy and every C variant.
    """
    if not (type(x) is np.ndarray and x.dtype is _F32 and x.flags.c_contiguous):  # (the usual x, checked)
        x = check_array(x, "x", dtypes=[np.float32], contiguous=True)
    try:
        dt = np.dtype(dtype)
    except TypeError:
        raise DTypeError(f"dtype: expected one of int8, uint8, int16, uint16, got {dtype!r}") from None
    if dt not in QUANT_DTYPES:
        raise DTypeError(f"dtype: expected one of int8, uint8, int16, uint16, got {dt.name}")
    lo, hi = _TYPE_RANGE[dt]
    qmin = lo if qmin is None else check_int(qmin, "qmin", min_value=lo, max_value=hi)
    qmax = hi if qmax is None else check_int(qmax, "qmax", min_value=lo, max_value=hi)
    if qmin > qmax:
        raise ArgumentError(f"qmin, qmax: expected qmin <= qmax, got {qmin} > {qmax}")
    axis, s, z = _qparams(scale, zero_point, x.shape, axis, qmin, qmax)
    return dispatch("quantize", x, s, z, axis, dt, qmin, qmax)


def dequantize(q, scale, zero_point=0, *, axis=None):
    """Dequantize integers to float32: x_hat = (q - z) * s, one rounding after exact q - z.

    q : ndarray of int8, uint8, int16, uint16 or int32, any shape.
    scale, zero_point, axis : as for :func:`quantize`; zero_point must lie in q's type range.
    Returns a float32 ndarray with q's shape; bit-exact across backends.
    """
    if not (type(q) is np.ndarray and q.dtype in DEQUANT_DTYPES and q.flags.c_contiguous):  # (the usual q)
        q = check_array(q, "q", dtypes=list(DEQUANT_DTYPES), contiguous=True)
    axis, s, z = _qparams(scale, zero_point, q.shape, axis, *_TYPE_RANGE[q.dtype])
    return dispatch("dequantize", q, s, z, axis)


def quantize_rows(x, inv_smooth=None):
    """Dynamic per-row (per-token) symmetric int8 quantization in one fused pass per row.

    For x [M, K] and optional inv_smooth m^-1 [K], all float32, row i is quantized with its
    own scale::

        xs_ij = x_ij * inv_smooth_j         one float32 multiply (xs = x when None)
        a_i   = max_j |xs_ij|               exact (0 when K = 0)
        s_i   = a_i / 127                   one float32 division; s_i = 1 where it gives 0
                                            (a_i = 0, or a_i <= 63 * 2**-149 underflows)
        q_ij  = clamp(round_half_even(xs_ij / s_i), -127, 127)

    The last line is :func:`quantize`'s rule (ONNX QuantizeLinear, one float32 division),
    so ``q == quantize(xs, s, 0, axis=0, dtype=np.int8, qmin=-127, qmax=127)`` exactly, and
    ``q * s[:, None]`` dequantizes.  This is the activation quantizer of LLM.int8 /
    ZeroQuant-style W8A8 inference (Dettmers et al. 2022; Yao et al. 2022); ``inv_smooth``
    is SmoothQuant's diag(m)^-1 applied as a multiply by the precomputed float32
    reciprocals 1/m_j (Xiao et al. 2023) -- a multiply, not a division by m_j, which can
    differ in the last bit.

    Parameters
    ----------
    x : ndarray float32 [M, K], any memory layout (made C-contiguous once).
    inv_smooth : ndarray float32 [K] of finite values, or None.

    Returns
    -------
    (q, scale) : int8 [M, K] (C-contiguous) and float32 [M].  Bit-exact across the NumPy
    reference and every C variant.

    Raises
    ------
    ArgumentError naming ``x`` when a row holds NaN or Inf, or ``x * inv_smooth`` when a
    product overflows float32: a dynamic scale for such a row has no meaning.  The check is
    the row maximum itself (a NaN or Inf makes it non-finite), so it costs no extra pass.
    """
    x = check_array(x, "x", dtypes=[np.float32], ndim=2, contiguous=True)
    if inv_smooth is not None:
        inv_smooth = check_array(inv_smooth, "inv_smooth", dtypes=[np.float32], shape=(x.shape[1],),
                                 finite=True, contiguous=True)
    return dispatch("quantize_rows", x, inv_smooth)
