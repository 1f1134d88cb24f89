"""Strategies and checkers for sparse Linear kernels (CSR and N:M), usable by other projects.

A float kernel cannot be bit-exact against a reference that sums in another order, so the
check is the documented per-element bound (refcompress.kernels.sparse): every element of
the result must lie within

    gamma_k * (sum_j |w_ij| |x_bj| + |b_i|) + k * 2**-149,   k = nnz(row i) + 1,

of the exact product (computed in float64, whose own error the bound includes).  One line
tests another project's kernel::

    from refcompress.testing import check_spmm_csr
    check_spmm_csr(lambda x, indptr, indices, values, bias=None: my_kernel(...))

The cases break blocking (batch and feature sizes around 8 / 16 / 32 / 64 lanes, primes,
1), cover empty rows, all-zero and fully dense weights, sparsity 0 / 0.5 / 0.9 / 1, stored
zeros, values near the float32 limits (scaled so that no partial sum can overflow) and
products in the subnormal range, every index and indptr type, and non-contiguous x.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from hypothesis import given

try:
    from hypothesis import strategies as st
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError("refcompress.testing needs hypothesis: pip install \"refcompress[test]\"") from exc

from ..kernels.sparse import csr_to_dense, nm_to_dense, spmm_csr_error_bound, spmm_nm_error_bound
from .checks import _settings
from .strategies import relaid

__all__ = [
    "CsrCase",
    "NmCase",
    "NM_PATTERNS",
    "assert_within_error_bound",
    "check_spmm_csr",
    "check_spmm_nm",
    "csr_cases",
    "nm_cases",
    "spmm_csr_error_bound",
    "spmm_csr_exact",
    "spmm_nm_error_bound",
    "spmm_nm_exact",
]

#: Batch sizes around 8 / 16 / 32 / 64-lane panels (and 2 or 3 panels), primes and 1.
SPARSE_BATCHES = (1, 2, 3, 5, 7, 8, 9, 15, 16, 17, 31, 32, 33, 63, 64, 65, 97, 130)
#: in / out features: 1, primes, around vector widths and the uint8 / uint16 index limits.
SPARSE_FEATURES = (1, 2, 3, 7, 8, 13, 16, 17, 31, 32, 33, 64, 97, 255, 256, 257)
SPARSITIES = (0.0, 0.5, 0.9, 1.0)
#: (n, m) patterns: the common ones, and 3:5 for kernels' non-power-of-two path.
NM_PATTERNS = ((1, 4), (2, 4), (2, 8), (4, 8), (1, 2), (3, 5))


@dataclass
class CsrCase:
    """Arguments of ``spmm_csr(x, indptr, indices, values, bias=)``; ``shape`` is W's (out, in)."""

    x: np.ndarray
    indptr: np.ndarray
    indices: np.ndarray
    values: np.ndarray
    bias: np.ndarray | None
    shape: tuple


@dataclass
class NmCase:
    """Arguments of ``spmm_nm(x, values, indices, n, m, bias=)``."""

    x: np.ndarray
    values: np.ndarray
    indices: np.ndarray
    n: int
    m: int
    bias: np.ndarray | None


# ---- value generation -----------------------------------------------------------------------


def _magnitudes(draw, in_features):
    """(kind, scale of w, scale of x, scale of bias) as powers of two.

    "huge" puts products near 2**125 / in, so that sum |w||x| + |b| <= 2**126 and no
    partial sum in any order can overflow float32; "tiny" puts products in the subnormal
    range (below 2**-126), where the bound's absolute term matters."""
    kind = draw(st.sampled_from(["normal", "normal", "integers", "mixed", "huge", "tiny"]))
    if kind == "huge":
        ew = draw(st.integers(40, 100))
        ex = 125 - math.ceil(math.log2(in_features + 1)) - ew
        return kind, ew, ex, 124
    if kind == "tiny":
        ew = draw(st.integers(-140, -60))
        ex = draw(st.integers(-160, -125)) - ew
        return kind, ew, ex, -140
    return kind, 0, 0, 0


def _fill(rng, kind, shape, exp):
    if kind == "integers":  # exact sums: any dropped or doubled term shows up at once
        return rng.integers(-8, 9, size=shape).astype(np.float32)
    if kind == "mixed":  # many decades and signs: cancellation
        e = rng.integers(-30, 31, size=shape)
        return (rng.standard_normal(shape) * np.exp2(e)).astype(np.float32)
    if kind in ("huge", "tiny"):  # |v| <= 2**exp exactly, which the overflow budget relies on
        return (rng.uniform(-1.0, 1.0, shape) * 2.0**exp).astype(np.float32)
    return rng.standard_normal(shape).astype(np.float32)


def _mask(draw, rng, out_f, in_f):
    sparsity = draw(st.one_of(st.sampled_from(SPARSITIES), st.floats(0.0, 1.0)))
    mask = rng.random((out_f, in_f)) >= sparsity
    if out_f > 1 and draw(st.booleans()):  # some rows empty, some fully dense
        mask[rng.random(out_f) < 0.2] = False
        mask[rng.random(out_f) < 0.2] = True
    return mask


def _x(draw, rng, kind, batch, in_f, ex):
    x = _fill(rng, kind, (batch, in_f), ex)
    return relaid(x, draw(st.sampled_from(["c", "c", "fortran", "strided"])))


def _bias(draw, rng, kind, out_f, eb):
    if not draw(st.booleans()):
        return None
    return _fill(rng, kind, out_f, eb)


@st.composite
def csr_cases(draw, max_batch: int = 130, max_features: int = 257):
    """A :class:`CsrCase` built straight from a random mask (so stored zeros occur too)."""
    batch = draw(st.sampled_from([b for b in SPARSE_BATCHES if b <= max_batch]))
    out_f = draw(st.sampled_from([f for f in SPARSE_FEATURES if f <= max_features]))
    in_f = draw(st.sampled_from([f for f in SPARSE_FEATURES if f <= max_features]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    kind, ew, ex, eb = _magnitudes(draw, in_f)
    mask = _mask(draw, rng, out_f, in_f)
    W = _fill(rng, kind, (out_f, in_f), ew)
    rows, cols = np.nonzero(mask)
    fits = [dt for dt in (np.uint8, np.uint16, np.int32) if np.iinfo(dt).max >= in_f - 1]
    index_dtype = draw(st.sampled_from(fits))
    indptr = np.zeros(out_f + 1, draw(st.sampled_from([np.int64, np.int32])))
    np.cumsum(np.bincount(rows, minlength=out_f), out=indptr[1:])
    x = _x(draw, rng, kind, batch, in_f, ex)
    return CsrCase(x, indptr, cols.astype(index_dtype), W[rows, cols], _bias(draw, rng, kind, out_f, eb),
                   (out_f, in_f))


@st.composite
def nm_cases(draw, patterns=NM_PATTERNS, max_batch: int = 130, max_groups: int = 40):
    """An :class:`NmCase`: every group holds n stored entries at increasing positions, some
    of them explicit zeros (groups with fewer nonzeros, all-zero rows)."""
    n, m = draw(st.sampled_from(patterns))
    batch = draw(st.sampled_from([b for b in SPARSE_BATCHES if b <= max_batch]))
    out_f = draw(st.sampled_from([f for f in SPARSE_FEATURES if f <= 97]))
    groups = draw(st.sampled_from([g for g in (1, 2, 3, 4, 8, 13, 16, 17, 33, 40) if g <= max_groups]))
    in_f = groups * m
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    kind, ew, ex, eb = _magnitudes(draw, in_f)
    pos = np.sort(np.argsort(rng.random((out_f, groups, m)), axis=-1)[..., :n], axis=-1)
    values = _fill(rng, kind, (out_f, groups * n), ew)
    zero_frac = draw(st.sampled_from([0.0, 0.0, 0.3, 1.0]))
    values[rng.random(values.shape) < zero_frac] = 0.0
    x = _x(draw, rng, kind, batch, in_f, ex)
    return NmCase(x, values, pos.reshape(out_f, -1).astype(np.uint8), n, m, _bias(draw, rng, kind, out_f, eb))


# ---- exact results and the element-by-element check ----------------------------------------


def spmm_csr_exact(x, indptr, indices, values, bias=None) -> np.ndarray:
    """x @ W.T + b in float64 (float32 products are exact in float64)."""
    x = np.asarray(x)
    W = csr_to_dense(indptr, indices, values, (len(indptr) - 1, x.shape[-1])).astype(np.float64)
    y = x.astype(np.float64) @ W.T
    return y if bias is None else y + np.asarray(bias, np.float64)


def spmm_nm_exact(x, values, indices, n, m, bias=None) -> np.ndarray:
    """x @ W.T + b in float64 for an N:M weight."""
    W = nm_to_dense(values, indices, n, m).astype(np.float64)
    y = np.asarray(x).astype(np.float64) @ W.T
    return y if bias is None else y + np.asarray(bias, np.float64)


def assert_within_error_bound(actual, exact, bound, *, what: str = "spmm") -> None:
    """Assert float32 ``actual`` has ``exact``'s shape and |actual - exact| <= bound in
    every element (NaN fails); the message shows the first offending element."""
    actual = np.asarray(actual)
    if actual.dtype != np.float32:
        raise AssertionError(f"{what}: dtype {actual.dtype} != expected float32")
    if actual.shape != np.shape(exact):
        raise AssertionError(f"{what}: shape {actual.shape} != expected {np.shape(exact)}")
    err = np.abs(actual.astype(np.float64) - exact)
    bad = ~(err <= bound)
    if np.any(bad):
        idx = tuple(int(i) for i in np.argwhere(bad)[0])
        raise AssertionError(
            f"{what}: {int(bad.sum())} of {bad.size} elements outside the error bound; first at {idx}: "
            f"got {actual[idx]!r}, exact {exact[idx]!r}, |error| {err[idx]:.6g} > bound {bound[idx]:.6g}")


def check_spmm_csr(fn, *, max_examples: int = 100, max_batch: int = 130, max_features: int = 257) -> None:
    """Check ``fn(x, indptr, indices, values, bias=)`` -> float32 [batch, out] against the exact
    sparse product, element by element within the documented bound."""

    @_settings(max_examples)
    @given(case=csr_cases(max_batch=max_batch, max_features=max_features))
    def run(case):
        got = fn(case.x, case.indptr, case.indices, case.values, bias=case.bias)
        exact = spmm_csr_exact(case.x, case.indptr, case.indices, case.values, case.bias)
        bound = spmm_csr_error_bound(case.x, case.indptr, case.indices, case.values, case.bias)
        assert_within_error_bound(got, exact, bound, what="spmm_csr")

    run()


def check_spmm_nm(fn, *, max_examples: int = 100, patterns=NM_PATTERNS, max_batch: int = 130) -> None:
    """Check ``fn(x, values, indices, n, m, bias=)`` -> float32 [batch, out] against the exact
    N:M product, element by element within the documented bound."""

    @_settings(max_examples)
    @given(case=nm_cases(patterns=patterns, max_batch=max_batch))
    def run(case):
        got = fn(case.x, case.values, case.indices, case.n, case.m, bias=case.bias)
        exact = spmm_nm_exact(case.x, case.values, case.indices, case.n, case.m, case.bias)
        bound = spmm_nm_error_bound(case.x, case.values, case.indices, case.n, case.m, case.bias)
        assert_within_error_bound(got, exact, bound, what="spmm_nm")

    run()
