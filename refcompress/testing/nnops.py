"""Strategies and checkers for the transformer ops (GELU, LayerNorm, masked softmax).

A float kernel is held, element by element, to the bound derived from its operation
sequence (refcompress.kernels.nnops: ``gelu_error_bound``, ``layer_norm_error_bound``,
``softmax_error_bound``) against the reference evaluated in float64 on the same float32
inputs (x + residual and x + mask formed in float32 first, as the definitions say).
Where the reference is not finite the kernel must give the same value (NaN for NaN).
One line tests another project's kernel::

    from refcompress.testing import check_softmax
    check_softmax(lambda x, mask=None: my_softmax(x, mask))

The cases break tails and blocking (lengths 1, primes, around 8 / 16 / 32 lanes, BERT's
24, 116, 384), reach the kernels' limits (GELU around the exp flush at |x| = 13.19, +-inf,
NaN, subnormals, 3e38; softmax scores of +-80 and +-1e4, -inf and finfo.min masks, fully
masked rows, NaN rows; LayerNorm rows with a large offset and tiny spread, constant rows,
rows of one element, |x| up to 1e37 (the double fallback), tiny eps).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from hypothesis import given

try:
    from hypothesis import strategies as st
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError("refcompress.testing needs hypothesis: pip install \"refcompress[test]\"") from exc

from ..kernels.nnops import (gelu_error_bound, gelu_reference, layer_norm_error_bound, layer_norm_reference,
                             softmax_error_bound, softmax_reference)
from .checks import _settings

__all__ = ["LayerNormCase", "SoftmaxCase", "assert_within_bound", "check_gelu", "check_layer_norm",
           "check_softmax", "gelu_cases", "layer_norm_cases", "softmax_cases", "gelu_exact",
           "layer_norm_exact", "softmax_exact"]

#: Row lengths: 1, primes, around 8 / 16 / 32 lanes, and BERT's sequence / hidden sizes.
ROW_LENGTHS = (1, 2, 3, 5, 7, 8, 15, 16, 17, 24, 31, 32, 33, 47, 64, 97, 116, 384)
ROW_COUNTS = (1, 2, 3, 5, 8, 13, 17)


# ---- float64 evaluations of the definitions ------------------------------------------------


def gelu_exact(x) -> np.ndarray:
    """The reference's GELU evaluated in float64 on float32 x."""
    return gelu_reference(np.asarray(x).astype(np.float64))


def layer_norm_exact(x, weight, bias, eps, residual=None) -> np.ndarray:
    """The reference's LayerNorm in float64 on s = x (+ residual, formed in float32)."""
    s = np.asarray(x if residual is None else x + residual)
    return layer_norm_reference(s.astype(np.float64), np.asarray(weight, np.float64),
                                np.asarray(bias, np.float64), eps)


def softmax_exact(x, mask=None) -> np.ndarray:
    """The reference's softmax in float64 on z = x (+ mask, formed in float32)."""
    z = np.asarray(x if mask is None else x + mask)
    return softmax_reference(z.astype(np.float64))


def assert_within_bound(actual, exact, bound, *, what: str) -> None:
    """float32 ``actual`` has ``exact``'s shape, equals it where ``exact`` is not finite
    (NaN for NaN), and |actual - exact| <= bound elsewhere; reports the first offender."""
    actual = np.asarray(actual)
    if actual.dtype != np.float32:
        raise AssertionError(f"{what}: dtype {actual.dtype} != expected float32")
    if actual.shape != np.shape(exact):
        raise AssertionError(f"{what}: shape {actual.shape} != expected {np.shape(exact)}")
    a = actual.astype(np.float64)
    fin = np.isfinite(exact)
    with np.errstate(invalid="ignore"):
        bad = np.where(fin, ~(np.abs(a - exact) <= bound),
                       ~((a == exact) | (np.isnan(a) & np.isnan(exact))))
    if np.any(bad):
        idx = tuple(int(i) for i in np.argwhere(bad)[0])
        raise AssertionError(
            f"{what}: {int(bad.sum())} of {bad.size} elements outside the error bound; first at {idx}: "
            f"got {actual[idx]!r}, exact {exact[idx]!r}, bound {np.broadcast_to(bound, exact.shape)[idx]:.6g}")


# ---- strategies ------------------------------------------------------------------------------


def _rng(draw):
    return np.random.default_rng(draw(st.integers(0, 2**32 - 1)))


@st.composite
def gelu_cases(draw, max_elements: int = 3000):
    """float32 arrays of any rank (0-d included) with values that stress GELU's kernel."""
    ndim = draw(st.integers(0, 3))
    shape = tuple(draw(st.sampled_from(ROW_LENGTHS)) for _ in range(ndim))
    while int(np.prod(shape, dtype=np.int64)) > max_elements:
        shape = shape[1:]
    rng = _rng(draw)
    kind = draw(st.sampled_from(["normal", "wide", "flush", "specials", "tiny", "huge"]))
    size = int(np.prod(shape, dtype=np.int64))
    if kind == "normal":
        v = rng.standard_normal(size) * draw(st.sampled_from([0.5, 1.0, 3.0]))
    elif kind == "wide":
        v = rng.uniform(-20, 20, size)
    elif kind == "flush":  # around x^2/2 = 87, where exp is flushed to 0
        v = rng.choice([-1.0, 1.0], size) * rng.uniform(13.1, 13.3, size)
    elif kind == "tiny":
        v = rng.standard_normal(size) * 10.0 ** rng.integers(-45, -30, size)
    elif kind == "huge":
        v = rng.standard_normal(size) * 10.0 ** rng.integers(5, 38, size)
    else:
        v = rng.choice(np.array([0.0, -0.0, np.inf, -np.inf, np.nan, 1e-45, -1e-45, 1.0, -1.0, 3e38, -3e38,
                                 13.19, -13.19, 5.0, -5.0, -9.0]), size)
    with np.errstate(over="ignore"):
        return v.astype(np.float32).reshape(shape)


@dataclass
class LayerNormCase:
    """Arguments of ``layer_norm(x, weight, bias, eps, residual=)``."""

    x: np.ndarray
    weight: np.ndarray
    bias: np.ndarray
    eps: float
    residual: np.ndarray | None


@st.composite
def layer_norm_cases(draw):
    """Rows of the awkward lengths with offsets, constant rows, extreme magnitudes."""
    h = draw(st.sampled_from(ROW_LENGTHS))
    lead = draw(st.sampled_from([(), (1,), (3,), (17,), (2, 5), (2, 3, 2)]))
    shape = lead + (h,) if lead else (draw(st.sampled_from(ROW_COUNTS)), h)
    rng = _rng(draw)
    kind = draw(st.sampled_from(["normal", "offset", "constant", "huge", "tiny", "decades"]))
    if kind == "normal":
        x = rng.standard_normal(shape) * 2.0 + rng.standard_normal()
    elif kind == "offset":  # mean far from 0 with a tiny spread: cancellation in s - mean
        x = 1e4 * rng.choice([-1, 1]) + rng.standard_normal(shape) * 1e-2
    elif kind == "constant":
        x = np.broadcast_to(rng.standard_normal(shape[:-1] + (1,)) * 1e3, shape).copy()
    elif kind == "huge":  # beyond the float32 fast path: the double fallback
        x = rng.standard_normal(shape) * 10.0 ** rng.integers(28, 38)
    elif kind == "tiny":
        x = rng.standard_normal(shape) * 10.0 ** rng.integers(-40, -20)
    else:
        x = rng.standard_normal(shape) * 10.0 ** rng.integers(-8, 9, shape)
    x = x.astype(np.float32)
    residual = None
    if draw(st.booleans()):
        residual = (rng.standard_normal(shape) * np.max(np.abs(x), initial=1.0) * 1e-3).astype(np.float32)
    weight = (rng.standard_normal(h) * draw(st.sampled_from([1.0, 0.1, 10.0]))).astype(np.float32)
    bias = rng.standard_normal(h).astype(np.float32)
    eps = draw(st.sampled_from([1e-12, 1e-5, 1.0, 1e-30]))
    return LayerNormCase(x, weight, bias, eps, residual)


@dataclass
class SoftmaxCase:
    """Arguments of ``softmax(x, mask)``."""

    x: np.ndarray
    mask: np.ndarray | None


@st.composite
def softmax_cases(draw):
    """Attention-shaped scores [B, heads, Tq, Tk] (or rows [R, n]) with masks broadcast in
    every supported pattern, large scores, -inf / finfo.min masks, fully masked rows, NaN."""
    n = draw(st.sampled_from(ROW_LENGTHS))
    rng = _rng(draw)
    four_d = draw(st.booleans())
    if four_d:
        B, Hh, Tq = (draw(st.sampled_from([1, 2, 3])) for _ in range(3))
        shape = (B, Hh, Tq, n)
        pattern = draw(st.sampled_from(["none", "b11k", "11qk", "k", "b1qk", "full", "1h1k"]))
        mshape = {"none": None, "b11k": (B, 1, 1, n), "11qk": (1, 1, Tq, n), "k": (n,), "b1qk": (B, 1, Tq, n),
                  "full": shape, "1h1k": (1, Hh, 1, n)}[pattern]
    else:
        shape = (draw(st.sampled_from(ROW_COUNTS)), n)
        mshape = draw(st.sampled_from([None, (n,), (1, n), shape]))
    scale = draw(st.sampled_from([1.0, 10.0, 80.0, 1e4]))
    x = (rng.standard_normal(shape) * scale).astype(np.float32)
    if draw(st.integers(0, 9)) == 0:  # a NaN or +inf somewhere
        x.reshape(-1)[rng.integers(x.size)] = draw(st.sampled_from([np.nan, np.inf, -np.inf]))
    mask = None
    if mshape is not None:
        drop = draw(st.sampled_from([-np.inf, -1e4, float(np.finfo(np.float32).min)]))
        frac = draw(st.sampled_from([0.0, 0.3, 0.9, 1.0]))
        mask = np.where(rng.random(mshape) < frac, drop, 0.0).astype(np.float32)
        if draw(st.booleans()):  # one mask row fully dropped
            mask.reshape(-1, n)[0] = drop
    return SoftmaxCase(x, mask)


# ---- checkers --------------------------------------------------------------------------------


def check_gelu(fn, *, max_examples: int = 100) -> None:
    """Check float32 ``fn(x)`` against GELU's reference within ``gelu_error_bound``."""

    @_settings(max_examples)
    @given(x=gelu_cases())
    def run(x):
        assert_within_bound(fn(x), gelu_exact(x), gelu_error_bound(x), what="gelu")

    run()


def check_layer_norm(fn, *, max_examples: int = 100) -> None:
    """Check float32 ``fn(x, weight, bias, eps, residual=)`` against LayerNorm's reference
    within ``layer_norm_error_bound``."""

    @_settings(max_examples)
    @given(case=layer_norm_cases())
    def run(case):
        got = fn(case.x, case.weight, case.bias, case.eps, residual=case.residual)
        exact = layer_norm_exact(case.x, case.weight, case.bias, case.eps, case.residual)
        bound = layer_norm_error_bound(case.x, case.weight, case.bias, case.eps, residual=case.residual)
        assert_within_bound(got, exact, bound, what="layer_norm")

    run()


def check_softmax(fn, *, max_examples: int = 100) -> None:
    """Check float32 ``fn(x, mask)`` against the masked softmax reference within
    ``softmax_error_bound`` (fully masked rows must be 0, NaN rows NaN)."""

    @_settings(max_examples)
    @given(case=softmax_cases())
    def run(case):
        with np.errstate(over="ignore", invalid="ignore"):
            exact = softmax_exact(case.x, case.mask)
            bound = softmax_error_bound(case.x, case.mask)
        assert_within_bound(fn(case.x, case.mask), exact, bound, what="softmax")

    run()
