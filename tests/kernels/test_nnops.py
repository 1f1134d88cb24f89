"""gelu / layer_norm / softmax: every backend and ISA variant within the derived bounds."""

import math

import numpy as np
import pytest

import refcompress.kernels as kernels
from refcompress.errors import ArgumentError, BackendError, DTypeError, ShapeError
from refcompress.kernels import nnops
from refcompress.testing import check_gelu, check_layer_norm, check_softmax, kernel_variants
from refcompress.testing.nnops import (assert_within_bound, gelu_exact, layer_norm_exact, softmax_exact)

GELU = kernel_variants("gelu")
LN = kernel_variants("layer_norm")
SOFTMAX = kernel_variants("softmax")
ids = [f"{b}-{i}" if i else b for b, i in GELU]


def _forced(fn, backend, isa, threads=None):
    def run(*args, **kwargs):
        with kernels.use(backend, isa=isa, threads=threads):
            return fn(*args, **kwargs)
    return run


def test_every_variant_is_registered_and_runnable():
    assert [v for _, v in GELU[1:]] == kernels.variants("gelu")
    assert kernels.ops()["softmax"].variants == ("portable", "avx2", "avx512")
    for name, bound in [("gelu", nnops.gelu_error_bound), ("layer_norm", nnops.layer_norm_error_bound),
                        ("softmax", nnops.softmax_error_bound)]:
        op = kernels.ops()[name]
        assert op.tolerance == 2.0**-24 and op.extra["error_bound"] is bound
    if kernels.available()["c_built"]:
        assert "portable" in kernels.variants("layer_norm")


# ---- property tests: every variant against the reference within the bound -------------------


@pytest.mark.parametrize("backend,isa", GELU, ids=ids)
def test_gelu_matches_reference(backend, isa):
    check_gelu(_forced(kernels.gelu, backend, isa), max_examples=150)


@pytest.mark.parametrize("backend,isa", LN, ids=ids)
def test_layer_norm_matches_reference(backend, isa):
    check_layer_norm(_forced(kernels.layer_norm, backend, isa), max_examples=150)


@pytest.mark.parametrize("backend,isa", SOFTMAX, ids=ids)
def test_softmax_matches_reference(backend, isa):
    check_softmax(_forced(kernels.softmax, backend, isa), max_examples=150)


# ---- BERT shapes, thread splits ------------------------------------------------------------


@pytest.mark.parametrize("backend,isa", SOFTMAX, ids=ids)
@pytest.mark.parametrize("threads", [1, 2])
def test_bert_sized_calls_split_over_threads(backend, isa, threads):
    rng = np.random.default_rng(3)
    h = (rng.standard_normal((32 * 29, 384)) * 2).astype(np.float32)  # above the parallel threshold
    r = rng.standard_normal(h.shape).astype(np.float32)
    w, b = rng.standard_normal(384).astype(np.float32), rng.standard_normal(384).astype(np.float32)
    scores = (rng.standard_normal((32, 12, 29, 29)) * 8).astype(np.float32)
    lengths = rng.integers(1, 30, 32)
    mask = np.where(np.arange(29)[None, :] < lengths[:, None], 0.0, -np.inf).astype(np.float32)[:, None, None, :]
    ffn = (rng.standard_normal((32 * 29, 1536)) * 3).astype(np.float32)
    with kernels.use(backend, isa=isa, threads=threads):
        y = kernels.layer_norm(h, w, b, 1e-12, residual=r)
        p = kernels.softmax(scores, mask)
        g = kernels.gelu(ffn)
    assert_within_bound(y, layer_norm_exact(h, w, b, 1e-12, r),
                        nnops.layer_norm_error_bound(h, w, b, 1e-12, residual=r), what="layer_norm")
    assert_within_bound(p, softmax_exact(scores, mask), nnops.softmax_error_bound(scores, mask), what="softmax")
    assert_within_bound(g, gelu_exact(ffn), nnops.gelu_error_bound(ffn), what="gelu")
    assert np.all(p[..., lengths[0]:][0] == 0.0)


# ---- documented special values --------------------------------------------------------------


@pytest.mark.parametrize("backend,isa", SOFTMAX, ids=ids)
@pytest.mark.parametrize("n", [19, 100])  # the AVX-512 register path (<= 64) and the loop
def test_softmax_special_rows(backend, isa, n):
    x = np.zeros((6, n), np.float32)
    x[1, :] = -np.inf                  # fully masked by the scores themselves
    x[2, 3] = np.nan                   # NaN row
    x[3, 5] = np.inf                   # +inf row: inf - inf
    x[4, :] = [80.0 if j % 2 else -80.0 for j in range(n)]
    x[5, :] = [1e4 if j == 7 else -1e4 for j in range(n)]
    mask = np.zeros(n, np.float32)
    with kernels.use(backend, isa=isa):
        p = kernels.softmax(x, mask)
        full = kernels.softmax(np.ones((2, n), np.float32), np.full((1, n), -np.inf, np.float32))
        one = kernels.softmax(np.array([[3.0], [-1e4]], np.float32))
    np.testing.assert_array_equal(p[1], 0.0)
    assert np.all(np.isnan(p[2])) and np.all(np.isnan(p[3]))
    np.testing.assert_array_equal(full, 0.0)
    np.testing.assert_array_equal(one, 1.0)  # a row of one element is exactly 1
    assert p[5, 7] == 1.0 and np.all(p[5, np.arange(n) != 7] == 0.0)
    assert abs(float(np.sum(p[0], dtype=np.float64)) - 1.0) < 1e-6


@pytest.mark.parametrize("backend,isa", GELU, ids=ids)
def test_gelu_special_values(backend, isa):
    x = np.array([np.inf, -np.inf, np.nan, 0.0, -0.0, 3e38, -3e38, -13.3, 13.3], np.float32)
    with kernels.use(backend, isa=isa):
        g = kernels.gelu(x)
        g0 = kernels.gelu(np.float32(1.0))
    assert g[0] == np.inf and np.isnan(g[1]) and np.isnan(g[2])
    assert g[3] == 0.0 and g[4] == 0.0 and g[5] == np.float32(3e38) and g[6] == 0.0
    assert g[7] == 0.0 and g[8] == np.float32(13.3)
    assert g0.shape == () and abs(float(g0) - 0.5 * (1 + math.erf(1 / math.sqrt(2)))) < 1e-6


@pytest.mark.parametrize("backend,isa", LN, ids=ids)
def test_layer_norm_constant_rows_give_the_bias(backend, isa):
    rng = np.random.default_rng(1)
    x = np.broadcast_to((rng.standard_normal((5, 1)) * 1e3).astype(np.float32), (5, 97)).copy()
    w, b = rng.standard_normal(97).astype(np.float32), rng.standard_normal(97).astype(np.float32)
    with kernels.use(backend, isa=isa):
        y = kernels.layer_norm(x, w, b, 1e-12)
        y1 = kernels.layer_norm(rng.standard_normal((4, 1)).astype(np.float32), w[:1], b[:1])
    np.testing.assert_array_equal(y, np.broadcast_to(b, x.shape))
    np.testing.assert_array_equal(y1, np.broadcast_to(b[:1], (4, 1)))


@pytest.mark.parametrize("backend,isa", LN, ids=ids)
def test_layer_norm_fused_residual_is_layer_norm_of_the_float32_sum(backend, isa):
    rng = np.random.default_rng(2)
    x = rng.standard_normal((7, 33)).astype(np.float32)
    r = rng.standard_normal((7, 33)).astype(np.float32)
    w, b = rng.standard_normal(33).astype(np.float32), rng.standard_normal(33).astype(np.float32)
    with kernels.use(backend, isa=isa):
        fused = kernels.layer_norm(x, w, b, 1e-5, residual=r)
        two_step = kernels.layer_norm(x + r, w, b, 1e-5)
    np.testing.assert_array_equal(fused, two_step)


@pytest.mark.parametrize("backend,isa", SOFTMAX, ids=ids)
def test_every_mask_pattern_broadcasts_as_numpy_does(backend, isa):
    rng = np.random.default_rng(4)
    x = rng.standard_normal((2, 3, 5, 17)).astype(np.float32)
    for mshape in [(2, 1, 1, 17), (1, 1, 5, 17), (17,), (2, 1, 5, 17), (1, 3, 1, 17), (2, 3, 5, 17),
                   (3, 5, 17), (1, 17), (2, 3, 1, 17)]:
        mask = np.where(rng.random(mshape) < 0.4, -np.inf, rng.standard_normal(mshape)).astype(np.float32)
        with kernels.use(backend, isa=isa):
            p = kernels.softmax(x, mask)
        assert_within_bound(p, softmax_exact(x, mask), nnops.softmax_error_bound(x, mask), what=str(mshape))


def test_mask_row_mapping():
    x_shape = (2, 3, 5, 7)
    assert nnops._mask_rows(x_shape, np.zeros((2, 1, 1, 7), np.float32))[1:] == (2, 15)
    assert nnops._mask_rows(x_shape, np.zeros((1, 1, 5, 7), np.float32))[1:] == (5, 1)
    assert nnops._mask_rows(x_shape, np.zeros((7,), np.float32))[1:] == (1, 1)
    assert nnops._mask_rows(x_shape, np.zeros((1, 3, 1, 7), np.float32))[1:] == (3, 5)
    m, rows, div = nnops._mask_rows(x_shape, np.zeros((2, 1, 5, 7), np.float32))  # expanded
    assert (rows, div) == (30, 1) and m.shape == (30, 7)


# ---- float64, backends ---------------------------------------------------------------------


def test_float64_runs_the_reference_on_every_backend():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((3, 10))
    w, b = np.ones(10), np.zeros(10)
    for backend in ("numpy", "c", "auto"):
        if backend == "c" and not kernels.available()["c_built"]:
            continue
        with kernels.use(backend):
            np.testing.assert_array_equal(kernels.gelu(x), nnops.gelu_reference(x))
            np.testing.assert_array_equal(kernels.layer_norm(x, w, b), nnops.layer_norm_reference(x, w, b, 1e-12))
            np.testing.assert_array_equal(kernels.softmax(x), nnops.softmax_reference(x))
            assert kernels.gelu(x).dtype == np.float64


def test_numpy_backend_is_the_reference_bit_for_bit():
    rng = np.random.default_rng(6)
    x = rng.standard_normal((4, 9)).astype(np.float32)
    with kernels.use("numpy"):
        np.testing.assert_array_equal(kernels.gelu(x), nnops.gelu_reference(x))
        np.testing.assert_array_equal(kernels.softmax(x, x[0]), nnops.softmax_reference(x, x[0]))


@pytest.mark.skipif(not kernels.available()["c_built"], reason="C extension not built")
def test_unavailable_isa_is_an_error_not_a_fallback():
    x = np.ones(4, np.float32)
    with kernels.use("c", isa="avx512_vnni"):
        with pytest.raises(BackendError, match="gelu"):
            kernels.gelu(x)


# ---- the bounds are derived, not vacuous -----------------------------------------------------


def test_exp_bound_holds_and_is_tight():
    # The kernels' exp seen through softmax of two elements [0, d]: p1 = e^d / (1 + e^d).
    assert 3 * nnops.U < nnops.EXP_REL_ERROR < 6 * nnops.U
    d = -np.linspace(0, 86.9, 20001).astype(np.float32)
    x = np.stack([np.zeros_like(d), d], axis=1)
    for isa in kernels.variants("softmax"):
        with kernels.use("c", isa=isa):
            p = kernels.softmax(x)
        assert_within_bound(p, softmax_exact(x), nnops.softmax_error_bound(x), what=isa)


def test_bounds_are_a_few_ulps_on_bert_like_data():
    rng = np.random.default_rng(7)
    x = (rng.standard_normal(10000) * 3).astype(np.float32)
    g = np.abs(gelu_exact(x))
    big = g > 1e-3
    assert np.max(nnops.gelu_error_bound(x)[big] / g[big]) < 40 * nnops.U
    s = (rng.standard_normal((64, 116)) * 3).astype(np.float32)
    p = softmax_exact(s)
    rel = (nnops.softmax_error_bound(s) - 2.0 ** -125) / p
    assert np.max(rel) < (116 + 80) * nnops.U
    h = rng.standard_normal((16, 384)).astype(np.float32)
    w, b = np.ones(384, np.float32), np.zeros(384, np.float32)
    y = np.abs(layer_norm_exact(h, w, b, 1e-12))
    assert np.max(nnops.layer_norm_error_bound(h, w, b, 1e-12)[y > 0.1] / y[y > 0.1]) < 12 * nnops.U


# ---- the checkers catch plausible wrong kernels ----------------------------------------------


def test_checker_catches_gelu_tanh_approximation():
    def tanh_gelu(x):
        x64 = x.astype(np.float64)
        with np.errstate(all="ignore"):
            return (0.5 * x64 * (1 + np.tanh(np.sqrt(2 / np.pi) * (x64 + 0.044715 * x64 ** 3)))).astype(np.float32)

    with pytest.raises(AssertionError):
        check_gelu(tanh_gelu, max_examples=200)


def test_checker_catches_float32_one_pass_variance():
    def one_pass(x, weight, bias, eps, residual=None):
        s = x if residual is None else x + residual
        with np.errstate(all="ignore"):
            m = s.mean(-1, keepdims=True, dtype=np.float32)
            v = np.maximum((s * s).mean(-1, keepdims=True, dtype=np.float32) - m * m, 0)
            return ((s - m) / np.sqrt(v + np.float32(eps)) * weight + bias).astype(np.float32)

    with pytest.raises(AssertionError):
        check_layer_norm(one_pass, max_examples=200)


def test_checker_catches_softmax_that_ignores_fully_masked_rows_or_overflows():
    def naive(x, mask=None):
        with np.errstate(all="ignore"):  # -inf + inf in masks, overflow: this kernel is wrong on purpose
            z = x if mask is None else x + mask
            e = np.exp(z)  # no max subtraction: overflow at 89, 0/0 for masked rows
            return (e / e.sum(-1, keepdims=True)).astype(np.float32)

    with pytest.raises(AssertionError):
        check_softmax(naive, max_examples=200)


# ---- bad input -----------------------------------------------------------------------------


def test_bad_inputs_name_the_argument():
    x = np.zeros((2, 3), np.float32)
    w = np.ones(3, np.float32)
    with pytest.raises(DTypeError, match="x: expected dtype float32, float64, got int32"):
        kernels.gelu(x.astype(np.int32))
    with pytest.raises(DTypeError, match="x: expected a numpy.ndarray"):
        kernels.gelu("abc")
    with pytest.raises(ShapeError, match="weight"):
        kernels.layer_norm(x, w[:2], w)
    with pytest.raises(DTypeError, match="bias"):
        kernels.layer_norm(x, w, w.astype(np.float64))
    with pytest.raises(ArgumentError, match="eps"):
        kernels.layer_norm(x, w, w, eps=0.0)
    with pytest.raises(ArgumentError, match="eps"):
        kernels.layer_norm(x, w, w, eps=float("inf"))
    with pytest.raises(ShapeError, match="residual"):
        kernels.layer_norm(x, w, w, residual=x[:1])
    with pytest.raises(DTypeError, match="residual"):
        kernels.layer_norm(x, w, w, residual=x.astype(np.float64))
    with pytest.raises(ShapeError, match="x: expected at least 1 dimensions"):
        kernels.layer_norm(np.float32(1.0), w[:1], w[:1])
    with pytest.raises(ShapeError, match="non-empty last axis"):
        kernels.softmax(np.zeros((2, 0), np.float32))
    with pytest.raises(ShapeError, match="mask"):
        kernels.softmax(x, np.zeros(4, np.float32))
    with pytest.raises(ShapeError, match="mask"):
        kernels.softmax(x, np.zeros((3, 3), np.float32))
    with pytest.raises(ShapeError, match="mask"):
        kernels.softmax(x, np.zeros((1, 2, 3), np.float32))
    with pytest.raises(DTypeError, match="mask"):
        kernels.softmax(x, np.zeros(3, np.float64))


def test_non_contiguous_and_empty_inputs():
    rng = np.random.default_rng(8)
    x = rng.standard_normal((6, 40)).astype(np.float32)[:, ::2]
    w, b = np.ones(20, np.float32), np.zeros(20, np.float32)
    assert_within_bound(kernels.gelu(x), gelu_exact(x), nnops.gelu_error_bound(x), what="gelu")
    assert_within_bound(kernels.softmax(x.T), softmax_exact(x.T), nnops.softmax_error_bound(x.T), what="softmax")
    assert_within_bound(kernels.layer_norm(x, w, b), layer_norm_exact(x, w, b, 1e-12),
                        nnops.layer_norm_error_bound(x, w, b, 1e-12), what="layer_norm")
    assert kernels.gelu(np.zeros((0, 3), np.float32)).shape == (0, 3)
    assert kernels.softmax(np.zeros((0, 3), np.float32)).shape == (0, 3)
    assert kernels.layer_norm(np.zeros((0, 3), np.float32), w[:3], b[:3]).shape == (0, 3)
