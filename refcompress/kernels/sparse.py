"""Sparse Linear layers from pruned weights: CSR (unstructured) and N:M (semi-structured).

A pruned ``Linear`` keeps a weight ``W [out, in]`` (PyTorch layout) of which most entries
are zero.  Only the stored entries take part in the product::

    y[b, i] = bias[i] + sum_{(j, w) stored in row i}  w * x[b, j]        (y = x @ W.T + b)

Storage formats
---------------
* **CSR** (compressed sparse rows; Han et al., "Learning both Weights and Connections for
  Efficient Neural Networks", NeurIPS 2015, store pruned layers this way): ``indptr [out+1]``
  int64 (or int32), ``indices [nnz]`` column numbers strictly increasing within a row, in
  the narrowest type that holds ``in - 1`` (uint8 for in <= 256, uint16 for in <= 65536,
  else int32), ``values [nnz]`` float32.  Row i is ``indices[indptr[i]:indptr[i+1]]``.
* **N:M** (at most n nonzeros in every group of m consecutive inputs of a row; 2:4 is the
  pattern of NVIDIA's sparse tensor cores, Mishra et al., "Accelerating Sparse Deep Neural
  Networks", arXiv:2104.08378, 2021): ``values [out, in/m*n]`` float32 and ``indices
  [out, in/m*n]`` uint8, the position (0..m-1, increasing) of each kept weight inside its
  group.  Stored entry p of a row is column ``(p // n) * m + indices[p]``; a group with fewer
  than n nonzeros stores explicit zeros.

Accuracy (float sums are not bit-exact)
---------------------------------------
Every implementation -- the NumPy reference and each C variant -- sums a row's products and
the bias in float32 in *some* order (partial sums, FMA or separate multiply and add).  For
any order, Higham (Accuracy and Stability of Numerical Algorithms, 2nd ed., eqs. 3.4-3.5)
bounds the error of a k-term dot product by gamma_k times the sum of the absolute terms, so
for each output element, against the exact value::

    |y[b, i] - y_exact[b, i]| <= gamma_k * (sum_j |w_ij| |x[b, j]| + |bias_i|) + k * 2**-149
    gamma_k = k u / (1 - k u),  u = 2**-24,  k = nnz(row i) + 1

(the last term covers products that underflow into the subnormal range, each off by at
most half a subnormal spacing 2**-150).  :func:`spmm_csr_error_bound` and
:func:`spmm_nm_error_bound` compute it element by element; the tests check every variant
against a float64 result with it (plus the float64 result's own, far smaller, error).  It
holds while no partial sum overflows.  Non-finite x or w propagate by IEEE rules, but only
through *stored* entries: a pruned weight is absent, not a zero times NaN.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from .._validation import check_array, check_choice, check_int
from ..errors import ArgumentError, DTypeError, ShapeError
from . import _native
from ._frozen import Frozen
from ._registry import Op, check_rc, current, dispatch, register, resolve, selected_variant

__all__ = [
    "CSR",
    "NM",
    "PackedCSR",
    "PackedNM",
    "pack_csr",
    "pack_nm",
    "UNIT_ROUNDOFF",
    "csr_from_dense",
    "csr_to_dense",
    "gamma",
    "index_dtype_for",
    "nm_columns",
    "nm_from_dense",
    "nm_to_dense",
    "spmm_csr",
    "spmm_csr_error_bound",
    "spmm_nm",
    "spmm_nm_error_bound",
]

#: Unit roundoff of float32 (round to nearest): half the spacing of floats in [1, 2).
UNIT_ROUNDOFF = 2.0**-24
#: Largest error of one float32 operation whose result is subnormal: half of 2**-149.
_UNDERFLOW_ETA = 2.0**-150

#: C type codes (csrc/refcompress.h) of the accepted CSR index types.
INDEX_DTYPES = {np.dtype(np.uint8): 1, np.dtype(np.uint16): 3, np.dtype(np.int32): 4}
INDPTR_DTYPES = (np.dtype(np.int32), np.dtype(np.int64))

# rc_csr_check / rc_nm_check result codes (RC_SPCHK_* in csrc/refcompress.h).
_START, _ORDER, _END, _INDEX_ORDER, _INDEX_RANGE = 1, 2, 3, 4, 5


class CSR(NamedTuple):
    """A CSR weight: ``csr_to_dense(*csr)`` rebuilds the dense ``W [out, in]``."""

    indptr: np.ndarray
    indices: np.ndarray
    values: np.ndarray
    shape: tuple


class NM(NamedTuple):
    """An N:M weight: ``spmm_nm(x, *nm)`` runs it (``pack_nm(*nm)`` checks it once for
    repeated calls), ``nm_to_dense(*nm)`` rebuilds ``W``."""

    values: np.ndarray
    indices: np.ndarray
    n: int
    m: int


# ---- storage formats ---------------------------------------------------------------------------


def index_dtype_for(in_features: int) -> np.dtype:
    """The narrowest accepted index type holding every column 0 .. in_features - 1."""
    in_features = check_int(in_features, "in_features", min_value=0)
    if in_features <= 256:
        return np.dtype(np.uint8)
    if in_features <= 65536:
        return np.dtype(np.uint16)
    if in_features <= 2**31:
        return np.dtype(np.int32)
    raise ArgumentError(f"in_features: expected at most 2**31 columns, got {in_features}")


def _weight(W, name="W"):
    return check_array(W, name, dtypes=[np.float32], ndim=2, contiguous=True)


def csr_from_dense(W, *, index_dtype=None) -> CSR:
    """CSR of the nonzero entries of ``W [out, in]`` float32 (entries equal to 0 are pruned).

    Columns are sorted within each row; ``indptr`` is int64; ``index_dtype`` defaults to
    :func:`index_dtype_for(in) <index_dtype_for>` (uint8 / uint16 / int32) and may name a
    wider accepted type.  Returns ``CSR(indptr, indices, values, shape)``.
    """
    W = _weight(W)
    out_f, in_f = W.shape
    narrowest = index_dtype_for(in_f)
    if index_dtype is None:
        dt = narrowest
    else:
        try:
            dt = np.dtype(index_dtype)
        except TypeError:
            dt = None
        if dt not in INDEX_DTYPES:
            raise DTypeError(f"index_dtype: expected uint8, uint16 or int32, got {index_dtype!r}")
        if np.iinfo(dt).max < in_f - 1:
            raise ArgumentError(f"index_dtype: {dt.name} cannot hold column {in_f - 1} (in_features = {in_f}); "
                                f"expected {narrowest.name} or wider")
    rows, cols = np.nonzero(W)  # row-major order: rows ascending, columns sorted within a row
    indptr = np.zeros(out_f + 1, np.int64)
    np.cumsum(np.bincount(rows, minlength=out_f), out=indptr[1:])
    return CSR(indptr, cols.astype(dt), W[rows, cols], (out_f, in_f))


def csr_to_dense(indptr, indices, values, shape) -> np.ndarray:
    """The dense float32 ``W [out, in]`` of a CSR weight (validated like :func:`spmm_csr`)."""
    if not (isinstance(shape, tuple) and len(shape) == 2):
        raise ShapeError(f"shape: expected a tuple (out_features, in_features), got {shape!r}")
    out_f = check_int(shape[0], "shape[0]", min_value=0)
    in_f = check_int(shape[1], "shape[1]", min_value=0)
    indptr, indices, values = _csr_arrays(indptr, indices, values, out_f)
    _check_csr_structure(indptr, indices, in_f)
    W = np.zeros((out_f, in_f), np.float32)
    W[np.repeat(np.arange(out_f), np.diff(indptr)), indices.astype(np.int64)] = values
    return W


def nm_columns(indices, n: int, m: int) -> np.ndarray:
    """int64 column of every stored N:M entry: ``(p // n) * m + indices[..., p]``."""
    k = np.asarray(indices).shape[-1]
    return (np.arange(k, dtype=np.int64) // n) * m + np.asarray(indices, np.int64)


def _check_nm(n, m):
    n = check_int(n, "n", min_value=1)
    m = check_int(m, "m", min_value=1, max_value=256)
    if n > m:
        raise ArgumentError(f"n, m: expected n <= m, got n = {n} > m = {m}")
    return n, m


def nm_from_dense(W, n: int, m: int) -> NM:
    """N:M storage of ``W [out, in]`` float32, whose every group of m consecutive inputs of a
    row (columns [g*m, (g+1)*m)) holds at most n nonzeros (an error names the first group
    that does not).  Kept positions are increasing within a group; a group with fewer than
    n nonzeros is filled with explicit zeros at its lowest free positions.
    Returns ``NM(values [out, in/m*n] float32, indices [out, in/m*n] uint8, n, m)``."""
    W = _weight(W)
    n, m = _check_nm(n, m)
    out_f, in_f = W.shape
    if in_f % m:
        raise ShapeError(f"W: expected in_features (W.shape[1]) divisible by m = {m}, got {in_f}")
    groups = W.reshape(out_f, in_f // m, m)
    nonzero = groups != 0
    counts = nonzero.sum(axis=-1)
    if np.any(counts > n):
        r, g = (int(v) for v in np.argwhere(counts > n)[0])
        raise ArgumentError(
            f"W: row {r}, columns [{g * m}, {(g + 1) * m}) hold {counts[r, g]} nonzeros; "
            f"a {n}:{m} pattern allows at most {n} in every group of {m}")
    # Nonzeros first, then zeros, each by position; keep the first n and sort them.
    key = np.where(nonzero, 0, m) + np.arange(m)
    pos = np.sort(np.argsort(key, axis=-1, kind="stable")[..., :n], axis=-1)
    values = np.take_along_axis(groups, pos, axis=-1).reshape(out_f, -1)
    return NM(np.ascontiguousarray(values), pos.reshape(out_f, -1).astype(np.uint8), n, m)


def nm_to_dense(values, indices, n: int, m: int) -> np.ndarray:
    """The dense float32 ``W [out, in/n*m]`` of an N:M weight (validated like :func:`spmm_nm`)."""
    values, indices, n, m = _nm_arrays(values, indices, n, m)
    out_f, k = values.shape
    W = np.zeros((out_f, k // n * m), np.float32)
    np.put_along_axis(W, nm_columns(indices, n, m), values, axis=1)
    return W


# ---- validation --------------------------------------------------------------------------------


def _x2d(x, in_features=None):
    """x [..., in] float32 as a C-contiguous [batch, in] array, plus the leading shape."""
    x = check_array(x, "x", dtypes=[np.float32], min_ndim=1, contiguous=True)
    if in_features is not None and x.shape[-1] != in_features:
        raise ShapeError(f"x: expected last dimension in_features = {in_features}, got shape {x.shape}")
    if x.shape[-1] >= 2**31:
        raise ShapeError(f"x: expected at most 2**31 - 1 input features, got {x.shape[-1]}")
    lead = x.shape[:-1]
    return x.reshape(math.prod(lead), x.shape[-1]), lead


def _csr_arrays(indptr, indices, values, out_features=None):
    indptr = check_array(indptr, "indptr", dtypes=INDPTR_DTYPES, ndim=1, contiguous=True)
    if indptr.shape[0] < 1:
        raise ShapeError("indptr: expected length out_features + 1 >= 1, got an empty array")
    if out_features is not None and indptr.shape[0] != out_features + 1:
        raise ShapeError(f"indptr: expected length out_features + 1 = {out_features + 1}, got {indptr.shape[0]}")
    indices = check_array(indices, "indices", dtypes=list(INDEX_DTYPES), ndim=1, contiguous=True)
    values = check_array(values, "values", dtypes=[np.float32], ndim=1, contiguous=True)
    if values.shape != indices.shape:
        raise ShapeError(f"values: expected shape (nnz,) = {indices.shape} like indices, got {values.shape}")
    return indptr, indices, values


def _csr_structure_numpy(indptr, indices, in_features):
    """(code, position) of the first structural error (0, 0 if none): the NumPy twin of
    rc_csr_check, used when the C extension is not built."""
    ip = indptr.astype(np.int64)
    if ip[0] != 0:
        return _START, 0
    steps = np.diff(ip)
    if np.any(steps < 0):
        return _ORDER, int(np.flatnonzero(steps < 0)[0])
    if ip[-1] != indices.shape[0]:
        return _END, ip.shape[0] - 1
    idx = indices.astype(np.int64)
    rows = np.repeat(np.arange(ip.shape[0] - 1), steps)
    order = np.flatnonzero((idx[1:] <= idx[:-1]) & (rows[1:] == rows[:-1])) + 1
    rng = np.flatnonzero((idx < 0) | (idx >= in_features))
    firsts = [(int(order[0]), _INDEX_ORDER)] if order.size else []
    firsts += [(int(rng[0]), _INDEX_RANGE)] if rng.size else []
    if not firsts:
        return 0, 0
    pos, code = min(firsts)  # at one position the order error is reported first (4 < 5)
    return code, pos


def _csr_structure(indptr, indices, in_features, *, use_c=True):
    if use_c and _native.lib is not None:
        where = _native.ffi.new("long long *")
        code = _native.lib.rc_csr_check(
            _native.ptr("void *", indptr), indptr.itemsize, indptr.shape[0] - 1,
            _native.ptr("void *", indices), INDEX_DTYPES[indices.dtype], indices.shape[0], in_features, where)
        if code < 0:
            raise RuntimeError("rc_csr_check rejected validated arguments; this is a bug")
        return code, int(where[0])
    return _csr_structure_numpy(indptr, indices, in_features)


def _check_csr_structure(indptr, indices, in_features, *, use_c=True):
    """Raise naming the argument for the first structural error of a CSR weight."""
    code, p = _csr_structure(indptr, indices, in_features, use_c=use_c)
    if code == 0:
        return
    nnz = indices.shape[0]
    if code == _START:
        raise ArgumentError(f"indptr: expected indptr[0] == 0, got {int(indptr[0])}")
    if code == _ORDER:
        raise ArgumentError(f"indptr: expected non-decreasing values, got indptr[{p + 1}] = {int(indptr[p + 1])} "
                            f"< indptr[{p}] = {int(indptr[p])}")
    if code == _END:
        raise ArgumentError(f"indptr: expected indptr[-1] == nnz = len(indices) = {nnz}, got {int(indptr[-1])}")
    row = int(np.searchsorted(indptr, p, side="right")) - 1
    if code == _INDEX_ORDER:
        raise ArgumentError(f"indices: expected strictly increasing columns within a row (sorted, no duplicates), "
                            f"got indices[{p}] = {int(indices[p])} after {int(indices[p - 1])} in row {row}")
    raise ArgumentError(f"indices: expected columns in [0, in_features = {in_features}), "
                        f"got indices[{p}] = {int(indices[p])} in row {row}")


def _nm_arrays(values, indices, n, m):
    n, m = _check_nm(n, m)
    values = check_array(values, "values", dtypes=[np.float32], ndim=2, contiguous=True)
    indices = check_array(indices, "indices", dtypes=[np.uint8], ndim=2, contiguous=True)
    if indices.shape != values.shape:
        raise ShapeError(f"indices: expected the shape of values {values.shape}, got {indices.shape}")
    if values.shape[1] % n:
        raise ShapeError(f"values: expected a row length (values.shape[1]) that is a multiple of n = {n}, "
                         f"got {values.shape[1]}")
    _check_nm_structure(indices, n, m)
    return values, indices, n, m


def _nm_structure_numpy(indices, n, m):
    """(code, flat position) of the first bad N:M position (0, 0 if none): rc_nm_check's twin."""
    flat = indices.reshape(-1).astype(np.int64)
    p = np.arange(flat.shape[0])
    order = np.flatnonzero((p[1:] % n != 0) & (flat[1:] <= flat[:-1])) + 1
    rng = np.flatnonzero(flat >= m)
    firsts = [(int(order[0]), _INDEX_ORDER)] if order.size else []
    firsts += [(int(rng[0]), _INDEX_RANGE)] if rng.size else []
    if not firsts:
        return 0, 0
    pos, code = min(firsts)
    return code, pos


def _nm_structure(indices, n, m, *, use_c=True):
    if use_c and _native.lib is not None:
        where = _native.ffi.new("long long *")
        code = _native.lib.rc_nm_check(_native.ptr("uint8_t *", indices), indices.shape[0], indices.shape[1],
                                       n, m, where)
        if code < 0:
            raise RuntimeError("rc_nm_check rejected validated arguments; this is a bug")
        return code, int(where[0])
    return _nm_structure_numpy(indices, n, m)


def _check_nm_structure(indices, n, m, *, use_c=True):
    code, p = _nm_structure(indices, n, m, use_c=use_c)
    if code == 0:
        return
    k = indices.shape[1]
    r, c = divmod(p, k) if k else (0, 0)
    got = int(indices[r, c])
    if code == _INDEX_ORDER:
        raise ArgumentError(f"indices: expected increasing positions within each group of n = {n}, got "
                            f"indices[{r}, {c}] = {got} after {int(indices[r, c - 1])}")
    raise ArgumentError(f"indices: expected positions in [0, m = {m}), got indices[{r}, {c}] = {got}")


def _bias(bias, out_features):
    if bias is None:
        return None
    return check_array(bias, "bias", dtypes=[np.float32], shape=(out_features,), contiguous=True)


# ---- the tolerance -----------------------------------------------------------------------------


def gamma(k, u: float = UNIT_ROUNDOFF):
    """Higham's gamma_k = k u / (1 - k u) (elementwise for an array k; requires k u < 1)."""
    k = np.asarray(k, np.float64)
    if np.any(k * u >= 1):
        raise ArgumentError(f"k: expected k * u < 1 for gamma_k, got k = {k.max()}")
    return k * u / (1 - k * u)


def _error_bound(x2, W_abs, row_nnz, bias):
    """gamma_k (sum_j |w_ij||x_bj| + |b_i|) + k 2**-149 per element, k = nnz(row) + 1, widened by
    the float64 result's own error (dense float64 product: gamma_{in+1}(2**-53)) and by the
    rounding of this float64 evaluation (both < 1e-12 relative)."""
    in_f = x2.shape[1]
    S = np.abs(x2.astype(np.float64)) @ W_abs.T
    if bias is not None:
        S = S + np.abs(bias.astype(np.float64))
    k = row_nnz.astype(np.float64) + 1
    g64 = gamma(in_f + 1, 2.0**-53)
    bound = (gamma(k) + g64) * S * (1 + 2 * g64) + k * 2 * _UNDERFLOW_ETA
    return bound * (1 + 2.0**-40)


def spmm_csr_error_bound(x, indptr, indices, values, bias=None) -> np.ndarray:
    """The documented bound on |y - y_exact| for every element of ``spmm_csr``'s result
    (float64, shape x.shape[:-1] + (out,)): see the module docstring."""
    x2, lead = _x2d(x)
    indptr, indices, values = _csr_arrays(indptr, indices, values)
    out_f = indptr.shape[0] - 1
    W_abs = np.abs(csr_to_dense(indptr, indices, values, (out_f, x2.shape[1]))).astype(np.float64)
    bound = _error_bound(x2, W_abs, np.diff(indptr.astype(np.int64)), _bias(bias, out_f))
    return bound.reshape(lead + (out_f,))


def spmm_nm_error_bound(x, values, indices, n, m, bias=None) -> np.ndarray:
    """The documented bound on |y - y_exact| for every element of ``spmm_nm``'s result; every
    row stores in/m*n entries, so k = in/m*n + 1."""
    values, indices, n, m = _nm_arrays(values, indices, n, m)
    out_f, k = values.shape
    x2, lead = _x2d(x, k // n * m)
    W_abs = np.abs(nm_to_dense(values, indices, n, m)).astype(np.float64)
    bound = _error_bound(x2, W_abs, np.full(out_f, k), _bias(bias, out_f))
    return bound.reshape(lead + (out_f,))


# ---- references --------------------------------------------------------------------------------


def spmm_csr_reference(x, indptr, indices, values, bias):
    """NumPy definition, one row of W at a time: y[:, i] = x[:, cols_i] @ vals_i (+ b_i)
    with cols_i, vals_i = indices, values[indptr[i]:indptr[i+1]] (an empty row gives 0)."""
    y = np.zeros((x.shape[0], indptr.shape[0] - 1), np.float32)
    for i in range(y.shape[1]):
        s, e = indptr[i], indptr[i + 1]
        y[:, i] = x[:, indices[s:e]] @ values[s:e]
    return y if bias is None else y + bias


def spmm_nm_reference(x, values, indices, n, m, bias):
    """NumPy definition: y[b, i] = sum_p values[i, p] * x[b, (p // n) * m + indices[i, p]] (+ b_i)."""
    y = np.einsum("bik,ik->bi", x[:, nm_columns(indices, n, m)], values)
    return y if bias is None else y + bias


# ---- packed CSR: validated once, laid out for the kernels -------------------------------------

#: pack_csr's batch-1 forms: "rows" (a row's entries, x gathered by index), "blockmask" (per
#: 16-column block a mask of the stored columns; no gather), "sell" (sliced ELLPACK: rows
#: sorted by length in windows of 256, 16 rows a slice, their entries step-major, so one
#: vector step serves 16 rows and no row needs a horizontal sum or a loop exit of its own).
#: "auto" picks by density.
FORMS = ("auto", "rows", "blockmask", "sell")
#: Density (stored / out*in) from which "auto" builds the block-mask form on AVX-512: its
#: cost is per 16-column block (~125 us for 1024 x 1024 here whatever the density), the row
#: form's per entry; they cross at density 0.5 (docs/sparse_kernels.md).  The portable and
#: AVX2 variants have no expand instruction and walk the mask bits in scalar code, 3-8x slower
#: than their row form at every density, so "auto" never picks it for them.
BMASK_MIN_DENSITY = 0.5
#: Density up to which "auto" builds the sliced-ELLPACK form on AVX-512.  Measured here (one
#: thread, kernel alone): 1024 x 1024 at density 0.02 10.2 -> 5.4 us, 0.05 17.0 -> 11.8,
#: 0.2 52 -> 45; 3072 x 768 at 0.02 26.6 -> 12.5 us.  It keeps a slice-ordered copy of the
#: values and indices (+6 bytes per entry, 2 for uint16 indices), which above this density buys
#: less than 10 % (0.3: 72 -> 67 us); the portable and AVX2 variants run it as scalar code.
SELL_MAX_DENSITY = 0.25
#: Lanes per slice of the sliced-ELLPACK form (RC_SP_SELL_C in csrc/refcompress.h).
SELL_C = 16
#: Column-blocked panels for batches > 1: "auto" (CSR from batch 64 and density 1/4, N:M
#: always), "on", "off".  Values are the C constants RC_SP_COLBLOCK_*.
COLBLOCK = {"auto": -1, "off": 0, "on": 1}
#: Rows per tile of the row-tile headers pack_csr builds for the column-blocked panels
#: (RC_SP_TL_ROWS in csrc/sparse/sparse.h): for every 64 rows and slice of columns (128 from
#: density 1 / TILE_NARROW_DENSITY_INV, 256 below), the rows in blocks of 4 of about equal entry
#: counts, which AVX-512 runs together (colblock "auto": from batch 64 and density
#: 1 / TILE_MIN_DENSITY_INV; "on": from batch 2; "off": never).
#: Structure only: values are still read from the held array.
TILE_ROWS = 64
#: The tiles' slices are TILE_COLS[0] columns wide from density 1 / TILE_NARROW_DENSITY_INV,
#: TILE_COLS[1] below it (RC_SP_TL_COLS_* in csrc/sparse/sparse.h; the header records it).
TILE_COLS = (128, 256)
TILE_NARROW_DENSITY_INV = 8
#: "auto" runs the row tiles from density 1 / 32 (RC_SP_TL_MIN_DENSITY_INV in
#: csrc/sparse/sparse.c); below it pack_csr does not build them (out * in / 16 bytes).
TILE_MIN_DENSITY_INV = 32
#: The widest weight the row tiles take (offsets within a tile are int32).
TILE_MAX_IN = (2**31 - 1) // TILE_ROWS
#: Whether pack_csr builds the row tiles (when colblock is not "off"); tests set it False to
#: reach the column-blocked and plain panel kernels the tiles replace.
CSR_TILES = True
_SAME = object()


class PackedCSR(Frozen):
    """A CSR weight ``W [out, in]`` (and optional bias) validated once and prepared for
    :func:`spmm_csr`: contiguous arrays, their C pointers, and the batch-1 form ``form``
    asks for ("auto": by density and ISA).  ``spmm_csr(x, packed)`` then skips the O(nnz)
    structure check; :meth:`with_values` swaps in new values of the same structure
    (fine-tuning) without re-checking it.

    Build it with :func:`pack_csr`.  The structure is copied: every product runs from
    read-only copies of ``indptr`` / ``indices`` checked here (``indptr`` / ``indices`` stay
    the arrays given), so changing the given arrays in place changes nothing, and no in-place
    change can send a kernel outside its arrays; pack again to take in a new structure.  The
    row tiles (``tiles``, read-only) are built only where a product can run them (see
    TILE_MIN_DENSITY_INV).  The values are held, not copied (when
    already contiguous float32): changing ``values`` in place is seen by the next call,
    **except in the "sell" form**, which holds copies of the values (made here and by
    :meth:`with_values`; every product of it, at any batch and on any backend, uses the
    values as packed): after changing values in place, take them in with
    ``packed = packed.with_values(values)``.  ``source_values`` is the array given.
    (SparseLinear does this for every new values array; its optimisers assign new arrays.)
    In the "sell" form ``values`` is read-only (an in-place change raises ValueError
    instead of leaving the packed copy stale): ``with_values`` is the way to new values.

    Attributes cannot be reassigned after construction (AttributeError): the kernels trust
    the sizes, arrays and pointers checked here.  ``with_values`` gives new values or bias,
    :func:`pack_csr` a new structure.
    """

    _FROZEN_HINT = "use with_values(values, bias) for new values or bias, pack_csr for a new structure"

    def __init__(self, indptr, indices, values, shape, bias=None, *, form="auto", colblock="auto"):
        if not (isinstance(shape, tuple) and len(shape) == 2):
            raise ShapeError(f"shape: expected a tuple (out_features, in_features), got {shape!r}")
        out_f = check_int(shape[0], "shape[0]", min_value=0)
        in_f = check_int(shape[1], "shape[1]", min_value=0)
        if in_f >= 2**31:
            raise ShapeError(f"shape: expected at most 2**31 - 1 input features, got {in_f}")
        form = check_choice(form, "form", FORMS)
        colblock = check_choice(colblock, "colblock", tuple(COLBLOCK))
        indptr, indices, values = _csr_arrays(indptr, indices, values, out_f)
        self._setup(indptr, indices, values, in_f, _bias(bias, out_f), form, colblock)
        self._freeze()

    @classmethod
    def _from_checked(cls, indptr, indices, values, in_f, bias, form, colblock):
        """From arrays that passed _csr_arrays and _bias (spmm_csr's one-off calls: no row
        tiles, whose O(nnz) build only pays back over many calls)."""
        p = object.__new__(cls)
        p._setup(indptr, indices, values, in_f, bias, form, colblock, kept=False)
        p._freeze()
        return p

    def _setup(self, indptr, indices, values, in_f, bias, form, colblock, kept=True):
        out_f = indptr.shape[0] - 1
        # the arrays given (SparseLinear compares them to see a new structure)
        self.indptr, self.indices = indptr, indices
        if kept:  # checked and used from copies no one else holds (a one-off call uses it at once)
            indptr, indices = _frozen_copy(indptr), _frozen_copy(indices)
        _check_csr_structure(indptr, indices, in_f)
        self._indptr, self._indices = indptr, indices
        self.shape = (out_f, in_f)
        self.out_features, self.in_features = out_f, in_f
        self.nnz = int(indices.shape[0])
        self.colblock = colblock
        self.form = self._choose_form(form)
        self.bmask = None
        self._sell = None
        if self.form == "sell" and _native.lib is not None:
            self._sell = _sell_layout(indptr, indices, out_f, in_f)
        if self.form == "blockmask" and _native.lib is not None:
            lib = _native.lib
            self.bmask = np.empty((out_f, lib.rc_csr_bmask_blocks(in_f)), np.uint16)
            check_rc(lib.rc_csr_bmask_build(_native.ptr("void *", indptr), indptr.itemsize, out_f,
                                            _native.ptr("void *", indices), INDEX_DTYPES[indices.dtype], in_f,
                                            _native.ptr("uint16_t *", self.bmask)), "pack_csr")
            self.bmask.flags.writeable = False
        self.tiles = None
        if kept and CSR_TILES and self._tiles_can_run():
            self.tiles = _csr_tiles(indptr, indices, out_f, in_f)
        self._set_values(values, bias)

    def _tiles_can_run(self):
        """Whether a product may take the row tiles: only the AVX-512 variant has their kernel,
        and "auto" takes them only from density 1 / TILE_MIN_DENSITY_INV (out * in / 16 bytes
        of headers would never be read below it)."""
        out_f, in_f = self.shape
        if _native.lib is None or self.colblock == "off" or not (out_f > 0 and 0 < in_f <= TILE_MAX_IN):
            return False
        if selected_variant("spmm_csr") != "avx512":
            return False
        return self.colblock == "on" or TILE_MIN_DENSITY_INV * self.nnz >= out_f * in_f

    def _choose_form(self, form):
        if form != "auto":
            return form
        if _native.lib is None or self.out_features * self.in_features == 0:
            return "rows"
        density = self.nnz / (self.out_features * self.in_features)
        if selected_variant("spmm_csr") != "avx512":
            return "rows"
        if density >= BMASK_MIN_DENSITY:
            return "blockmask"
        return "sell" if density <= SELL_MAX_DENSITY else "rows"

    def _set_values(self, values, bias):
        self.source_values = values  # the array given (SparseLinear compares it to see new values)
        if self.form == "sell":
            # The sell form's batch-1 kernel runs from its own slice-ordered copy; every other
            # product (batches > 1, the NumPy backend) runs from this copy, so that a PackedCSR
            # gives one answer whatever the batch: values as they were when packed.  Read-only
            # (a view of an immutable bytes object: no flag can make it writeable again), so an
            # in-place edit fails instead of reaching some products and not others.
            values = np.frombuffer(values.tobytes(), np.float32)
        self.values, self.bias = values, bias
        self._ws = None  # panel workspace, reused between calls (taken while a call runs)
        if _native.lib is None:
            self._c_args = None
            return
        null = _native.ffi.NULL
        if self._sell is not None:  # the form's own copy of the values, in slice order
            self._sell_values, self._sell_c = _sell_values(self._sell, self._indptr, values)
            self._sell_values.flags.writeable = False
            self._bias_c = null if bias is None else _native.ptr("float *", bias)
        self._c_args = (
            _native.ptr("void *", self._indptr), self._indptr.itemsize, _native.ptr("void *", self._indices),
            INDEX_DTYPES[self._indices.dtype], _native.ptr("float *", values),
            null if bias is None else _native.ptr("float *", bias),
            null if self.bmask is None else _native.ptr("uint16_t *", self.bmask),
            null if self.tiles is None else _native.ptr("void *", self.tiles), COLBLOCK[self.colblock])

    def with_values(self, values, bias=_SAME) -> "PackedCSR":
        """A PackedCSR of the same structure (and layout) with new ``values [nnz]`` float32
        and, when given, a new ``bias`` (None for none); the structure is not re-checked."""
        values = check_array(values, "values", dtypes=[np.float32], shape=(self.nnz,), contiguous=True)
        new = object.__new__(PackedCSR)
        for k, v in vars(self).items():  # (object.__setattr__: the copy's attributes stay fast to read)
            object.__setattr__(new, k, v)
        object.__setattr__(new, "_frozen", False)  # not yet shared: filled in, then frozen
        new._set_values(values, self.bias if bias is _SAME else _bias(bias, self.out_features))
        new._freeze()
        return new

    def __reduce__(self):
        # pickle / deepcopy: cffi pointers cannot be copied, so the copy is packed (and checked) anew
        return (_repack, (self._indptr, self._indices, self.values, self.shape, self.bias, self.form, self.colblock))

    def __repr__(self):
        return (f"PackedCSR(shape={self.shape}, nnz={self.nnz}, form={self.form!r}, colblock={self.colblock!r}, "
                f"bias={self.bias is not None})")


def _frozen_copy(a):
    a = a.copy()
    a.flags.writeable = False
    return a


def _csr_tiles(indptr, indices, out_f, in_f):
    """The row-tile headers of a checked CSR structure (rc_csr_tiles_build), read-only."""
    lib = _native.lib
    # at a cache-line start (with the 64-byte header, every 32-byte block sits in one line);
    # zeroed, since below density 1/8 the builder writes half of the blocks' room
    tiles = _native.aligned_empty(lib.rc_csr_tiles_bytes(out_f, in_f), np.uint8)
    tiles[...] = 0
    check_rc(lib.rc_csr_tiles_build(_native.ptr("void *", indptr), indptr.itemsize, out_f,
                                    _native.ptr("void *", indices), INDEX_DTYPES[indices.dtype], in_f,
                                    indices.shape[0], _native.ptr("void *", tiles)), "pack_csr")
    tiles.flags.writeable = False
    return tiles


def _sell_layout(indptr, indices, out_f, in_f):
    """The sliced-ELLPACK layout of a checked CSR structure: (struct, arrays it points to)."""
    lib, ffi, ptr = _native.lib, _native.ffi, _native.ptr
    if out_f >= 2**31 - 1:
        raise ShapeError(f"shape: the sell form takes fewer than 2**31 - 1 output features, got {out_f}")
    nsl = lib.rc_csr_sell_slices(out_f)
    off = np.empty(nsl + 1, np.int64)
    rows = np.empty(max(nsl * SELL_C, 1), np.int32)
    lens = np.empty(max(nsl * SELL_C, 1), np.int32)
    total = lib.rc_csr_sell_layout(ptr("void *", indptr), indptr.itemsize, out_f, ptr("long long *", off),
                                   ptr("int32_t *", rows), ptr("int32_t *", lens))
    if total < 0:
        raise RuntimeError("rc_csr_sell_layout rejected a checked structure; this is a bug")
    sdt = np.dtype(np.uint16) if in_f <= 65536 else np.dtype(np.int32)
    sind = np.empty(max(total, 1), sdt)
    layout = ffi.new("rc_csr_sell *")
    layout.nslices, layout.off, layout.rows, layout.lens = nsl, ptr("long long *", off), \
        ptr("int32_t *", rows), ptr("int32_t *", lens)
    layout.indices, layout.index_type = ptr("void *", sind), INDEX_DTYPES[sdt]
    check_rc(lib.rc_csr_sell_fill(ptr("void *", indptr), indptr.itemsize, out_f, ptr("void *", indices),
                                  INDEX_DTYPES[indices.dtype], ffi.NULL, layout, ptr("void *", sind),
                                  INDEX_DTYPES[sdt], ffi.NULL), "pack_csr")
    return {"c": layout, "off": off, "rows": rows, "lens": lens, "indices": sind, "total": total}


def _sell_values(sell, indptr, values):
    """values copied into the slice order of ``sell``, and the C struct that runs them."""
    lib, ffi, ptr = _native.lib, _native.ffi, _native.ptr
    sval = np.empty(max(sell["total"], 1), np.float32)
    lay = sell["c"]
    c = ffi.new("rc_csr_sell *", {"nslices": lay.nslices, "off": lay.off, "rows": lay.rows, "lens": lay.lens,
                                  "indices": lay.indices, "index_type": lay.index_type,
                                  "values": ptr("float *", sval)})
    check_rc(lib.rc_csr_sell_fill(ptr("void *", indptr), indptr.itemsize, indptr.shape[0] - 1,
                                  ffi.NULL, INDEX_DTYPES[np.dtype(np.uint8)], ptr("float *", values), lay, ffi.NULL, lay.index_type,
                                  ptr("float *", sval)), "pack_csr")
    return sval, c


def _repack(indptr, indices, values, shape, bias, form, colblock):
    return PackedCSR(indptr, indices, values, shape, bias, form=form, colblock=colblock)


class PackedNM(Frozen):
    """An N:M weight ``W [out, in]`` (and optional bias) validated once for :func:`spmm_nm`:
    ``spmm_nm(x, packed)`` then skips the O(nnz) check of the positions, about a third of a
    batch-1 call (2:4 at 1024 x 1024: ~14 of ~46 us).

    Build it with :func:`pack_nm`.  ``indices`` is a read-only copy of the positions checked
    here, so no in-place change of the array given can send the kernel outside x; pack again
    to take in a new structure.  ``values`` and ``bias`` are held, not copied (when already
    contiguous float32): changes made in place are seen by the next call.
    :meth:`with_values` swaps in a new values array of the same shape without re-checking
    the positions (fine-tuning).  Attributes cannot be reassigned after construction
    (AttributeError): use :meth:`with_values`, or :func:`pack_nm` for new positions.
    """

    _FROZEN_HINT = "use with_values(values, bias) for new values or bias, pack_nm for new positions"

    def __init__(self, values, indices, n, m, bias=None):
        values, indices, n, m = _nm_arrays(values, indices, n, m)
        self.source_indices = indices  # the array given (a layer compares it to see a new structure)
        # a view of an immutable bytes object: unlike a copy with its flag cleared, nothing
        # can make it writeable again
        indices = np.frombuffer(indices.tobytes(), np.uint8).reshape(indices.shape)
        self.values, self.indices, self.n, self.m = values, indices, n, m
        self.out_features = values.shape[0]
        self.in_features = values.shape[1] // n * m
        self.bias = _bias(bias, self.out_features)
        self._vshape = values.shape  # what spmm_nm checks values and indices still have (O(1))
        self._freeze()

    def with_values(self, values, bias=_SAME) -> "PackedNM":
        """A PackedNM of the same positions with new ``values [out, in / m * n]`` float32 and,
        when given, a new ``bias`` (None for none); the positions are not re-checked."""
        values = check_array(values, "values", dtypes=[np.float32], shape=self.values.shape, contiguous=True)
        p = object.__new__(PackedNM)
        for k, v in vars(self).items():  # (object.__setattr__: the copy's attributes stay fast to read)
            object.__setattr__(p, k, v)
        object.__setattr__(p, "values", values)  # (frozen: written before the object is shared)
        if bias is not _SAME:
            object.__setattr__(p, "bias", _bias(bias, self.out_features))
        return p

    def __reduce__(self):
        # pickle / deepcopy: the copy is packed (and its positions checked) anew from the
        # frozen copy of the positions checked here, as PackedCSR's is (not from the caller's
        # array, which may have changed since)
        return (PackedNM, (self.values, self.indices, self.n, self.m, self.bias))

    def __repr__(self):
        return (f"PackedNM({self.n}:{self.m}, out_features={self.out_features}, in_features={self.in_features}, "
                f"bias={self.bias is not None})")


def pack_nm(values, indices, n, m, bias=None) -> PackedNM:
    """Validate an N:M weight once for :func:`spmm_nm` (see :class:`PackedNM`); the arguments
    are those of :func:`spmm_nm` (e.g. ``pack_nm(*nm_from_dense(W, 2, 4), bias=b)``)."""
    return PackedNM(values, indices, n, m, bias)


def pack_csr(indptr, indices, values, shape, bias=None, *, form="auto", colblock="auto") -> PackedCSR:
    """Validate a CSR weight once and prepare it for :func:`spmm_csr` (see :class:`PackedCSR`).

    shape    : (out_features, in_features) of W.
    form     : batch-1 form: "auto" (AVX-512: "sell" up to density SELL_MAX_DENSITY,
               "blockmask" from BMASK_MIN_DENSITY, else "rows"; other variants "rows"),
               "rows", "blockmask" or "sell" (a slice-ordered copy of the values: see
               :class:`PackedCSR` on in-place changes).
    colblock : column-blocked panels for batches > 1: "auto", "on" or "off" (the variants
               without that kernel, portable and AVX2, ignore it).
    """
    return PackedCSR(indptr, indices, values, shape, bias, form=form, colblock=colblock)


# ---- C implementations -------------------------------------------------------------------------


def _workspace(batch, in_f):
    # Batch 1 runs the gather kernels straight from x; larger batches need the panels.
    if batch <= 1:
        return _native.ffi.NULL
    return _native.ptr("void *", np.empty(_native.lib.rc_spmm_workspace_size(batch, in_f), np.uint8))


def _f32_or_null(a):
    return _native.ffi.NULL if a is None else _native.ptr("float *", a)


def _spmm_csr_c(x, p, *, isa, threads):
    batch, in_f = x.shape
    y = np.empty((batch, p.out_features), np.float32)
    lib = _native.lib
    if batch == 1 and p._sell is not None:  # the whole call is a few microseconds: no helper layers
        fb = _native.ffi.from_buffer
        rc = lib.rc_spmv_csr_sell_f32(fb("float[]", x), in_f, p.out_features, p._sell_c, p._bias_c,
                                      fb("float[]", y), isa, threads)
        if rc:
            check_rc(rc, "spmm_csr")
        return y
    if batch <= 1:
        rc = lib.rc_spmm_csr_f32(_native.ptr("float *", x), batch, in_f, p.out_features, *p._c_args,
                                 _native.ptr("float *", y), _native.ffi.NULL, isa, threads)
    else:
        # The panel workspace is taken off the object for the call (a concurrent call on the
        # same PackedCSR allocates its own) and put back: a fresh multi-MB buffer per call
        # would cost page faults comparable to a small product.
        need = lib.rc_spmm_workspace_size(batch, in_f)
        ws = p.__dict__.pop("_ws", None)
        if ws is None or ws.shape[0] < need:
            ws = np.empty(need, np.uint8)
        rc = lib.rc_spmm_csr_f32(_native.ptr("float *", x), batch, in_f, p.out_features, *p._c_args,
                                 _native.ptr("float *", y), _native.ptr("void *", ws), isa, threads)
        object.__setattr__(p, "_ws", ws)  # (the object is frozen: its cache is written directly)
    check_rc(rc, "spmm_csr")
    return y


#: Which kernel an N:M product of batch > 1 takes (rc_spmm_nm_f32's ``colblock``): "auto"
#: lets C choose (on AVX-512 the row-vectorised kernel when m divides 16 but for 2:4 at batch
#: 64-255, else the column-blocked panels from batch 16); "on" / "off" force the panels / the plain row
#: kernel, which "auto" no longer reaches for some patterns (the tests force each).
NM_COLBLOCK = "auto"


def _spmm_nm_c(x, values, indices, n, m, bias, *, isa, threads):
    batch, in_f = x.shape
    out_f = values.shape[0]
    y = np.empty((batch, out_f), np.float32)
    rc = _native.lib.rc_spmm_nm_f32(
        _native.ptr("float *", x), batch, in_f, out_f, _native.ptr("float *", values),
        _native.ptr("uint8_t *", indices), n, m, _f32_or_null(bias), COLBLOCK[NM_COLBLOCK], _native.ptr("float *", y),
        _workspace(batch, in_f), isa, threads)
    check_rc(rc, "spmm_nm")
    return y


def _spmm_csr_packed_reference(x, p):
    return spmm_csr_reference(x, p._indptr, p._indices, p.values, p.bias)


_VARIANTS = ("portable", "avx2", "avx512")
TOLERANCE_DOC = (
    "float sum in any order: |y - y_exact| <= gamma_k * (sum_j |w_ij| |x_j| + |b_i|) + k * 2**-149 per "
    "element, gamma_k = k u / (1 - k u), u = 2**-24, k = nnz(row i) + 1 (Higham 2002, eqs. 3.4-3.5)"
)
register(Op("spmm_csr", _spmm_csr_packed_reference, _spmm_csr_c, _VARIANTS, tolerance=UNIT_ROUNDOFF,
            tolerance_doc=TOLERANCE_DOC, doc=__doc__, extra={"error_bound": spmm_csr_error_bound}))
register(Op("spmm_nm", spmm_nm_reference, _spmm_nm_c, _VARIANTS, tolerance=UNIT_ROUNDOFF,
            tolerance_doc=TOLERANCE_DOC, doc=__doc__, extra={"error_bound": spmm_nm_error_bound}))


# ---- public entry points -----------------------------------------------------------------------

_RESOLVED = (None, None, None)


def _resolved():
    """``resolve("spmm_csr")``, kept while the setting and the loaded library are the same
    objects (as resolve allows): the lookup costs ~0.2 us of a ~2 us batch-1 call."""
    global _RESOLVED
    s, lib = current(), _native.lib
    c = _RESOLVED
    if c[0] is s and c[1] is lib:
        return c[2]
    r = resolve("spmm_csr")
    _RESOLVED = (s, lib, r)
    return r



def spmm_csr(x, indptr, indices=None, values=None, bias=None, *, out_features=None, in_features=None):
    """y = x @ W.T + bias for a pruned weight W [out, in] stored as CSR (Han et al. 2015).

    ``y[..., i] = bias[i] + sum_{p in indptr[i]:indptr[i+1]} values[p] * x[..., indices[p]]``

    Parameters
    ----------
    x : float32 [..., in] (any memory layout; made C-contiguous once).
    indptr : int64 or int32 [out + 1], indptr[0] = 0, non-decreasing, indptr[-1] = nnz;
        or a :class:`PackedCSR` from :func:`pack_csr` (then indices, values, bias and the
        keywords must be left out): validated once, so a call checks only x.
    indices : uint8, uint16 or int32 [nnz]; columns in [0, in), strictly increasing in a row.
    values : float32 [nnz].
    bias : optional float32 [out].
    out_features, in_features : optional; when given, indptr's length and x's last
        dimension are checked against them (the arrays alone cannot tell a truncated indptr).

    Returns float32 [..., out].  Not bit-exact across backends: each element is within
    gamma_k (sum |w||x| + |b|) of the exact result, k = nnz(row) + 1 (module docstring).
    """
    if type(indptr) is PackedCSR:
        p = indptr
        if indices is not None or values is not None or bias is not None or out_features is not None \
                or in_features is not None:
            raise ArgumentError("indptr: a PackedCSR carries indices, values, bias and the shape; "
                                "expected them left out")
        in_f = p.in_features
        # the common case checked inline: at batch 1 the generic checks cost as much as the product
        if type(x) is np.ndarray and x.dtype == np.float32 and x.ndim == 2 and x.flags.c_contiguous \
                and x.shape[1] == in_f:
            impl, isa, threads = _resolved()
            return impl(x, p) if isa is None else impl(x, p, isa=isa, threads=threads)
        x2, lead = _x2d(x, in_f)
        return dispatch("spmm_csr", x2, p).reshape(lead + (p.out_features,))
    if out_features is not None:
        out_features = check_int(out_features, "out_features", min_value=0)
    if in_features is not None:
        in_features = check_int(in_features, "in_features", min_value=0)
    x2, lead = _x2d(x, in_features)
    if indices is None or values is None:
        raise ArgumentError("indices, values: expected arrays (or a PackedCSR as indptr), got None")
    indptr, indices, values = _csr_arrays(indptr, indices, values, out_features)
    out_f = indptr.shape[0] - 1
    # one-off: no block-mask form, whose O(nnz) build only pays back over many calls
    p = PackedCSR._from_checked(indptr, indices, values, x2.shape[1], _bias(bias, out_f), "rows", "auto")
    return dispatch("spmm_csr", x2, p).reshape(lead + (out_f,))


def spmm_nm(x, values, indices=None, n=None, m=None, bias=None):
    """y = x @ W.T + bias for an N:M semi-structured weight W [out, in] (Mishra et al. 2021).

    ``y[..., i] = bias[i] + sum_p values[i, p] * x[..., (p // n) * m + indices[i, p]]``

    Parameters
    ----------
    x : float32 [..., in] with in = values.shape[1] / n * m.
    values : float32 [out, in / m * n], or a :class:`PackedNM` from :func:`pack_nm` (then
        indices, n, m and bias come from it and must be left None; the positions are not
        checked again).
    indices : uint8 [out, in / m * n]: positions in [0, m), increasing within each group of n.
    n, m : the pattern (1 <= n <= m <= 256), e.g. 2, 4.
    bias : optional float32 [out].

    Returns float32 [..., out], within the same per-element bound as :func:`spmm_csr`
    with k = in / m * n + 1.
    """
    if isinstance(values, PackedNM):
        extra = [name for name, a in (("indices", indices), ("n", n), ("m", m), ("bias", bias)) if a is not None]
        if extra:
            raise ArgumentError(f"{', '.join(extra)}: pass them to pack_nm, not with a PackedNM")
        p = values
        v, ind, b = p.values, p.indices, p.bias
        if type(ind) is not np.ndarray or ind.flags.writeable:
            raise ArgumentError("values: a PackedNM whose positions were replaced after pack_nm; pack again")
        # O(1): an array's shape or dtype can be set in place (a.shape = ..., a.dtype = ...),
        # which would change the sizes the kernel derives from them
        shape = p._vshape
        if v.shape != shape or v.dtype != np.float32 or ind.shape != shape \
                or (b is not None and (b.shape != (p.out_features,) or b.dtype != np.float32)):
            raise ArgumentError(f"values: a PackedNM whose arrays were reshaped or retyped in place "
                                f"(expected values and indices of shape {shape}, float32 / uint8); pack again")
        x2, lead = _x2d(x, p.in_features)
        y = dispatch("spmm_nm", x2, p.values, p.indices, p.n, p.m, p.bias)
        return y.reshape(lead + (p.out_features,))
    if indices is None or n is None or m is None:
        missing = [name for name, a in (("indices", indices), ("n", n), ("m", m)) if a is None]
        raise ArgumentError(f"{', '.join(missing)}: expected with unpacked values (or pass a PackedNM)")
    values, indices, n, m = _nm_arrays(values, indices, n, m)
    out_f, k = values.shape
    x2, lead = _x2d(x, k // n * m)
    y = dispatch("spmm_nm", x2, values, indices, n, m, _bias(bias, out_f))
    return y.reshape(lead + (out_f,))
