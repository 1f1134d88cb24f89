"""quantize_rows (dynamic per-row symmetric int8): every backend and ISA variant, bit-exact
against the reference, which is itself quantize(x * inv_smooth, s, axis=0) with the
documented scale."""

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import refcompress.kernels as kernels
from refcompress.errors import ArgumentError, DTypeError, ShapeError
from refcompress.kernels.quantize import quantize_rows_reference
from refcompress.testing import assert_bitwise_equal, assert_exact, check_quantize_rows, kernel_variants, strategies

ROWS = kernel_variants("quantize_rows")
ids = [f"{b}-{i}" if i else b for b, i in ROWS]
TINY = 2.0**-149  # the smallest positive float32 (subnormal)


def _forced(backend, isa, threads=None):
    def run(x, inv_smooth=None):
        with kernels.use(backend, isa=isa, threads=threads):
            return kernels.quantize_rows(x, inv_smooth)
    return run


def _reference(x, inv_smooth=None):
    with kernels.use("numpy"):
        return kernels.quantize_rows(x, inv_smooth)


@pytest.mark.parametrize("backend,isa", ROWS, ids=ids)
def test_matches_reference(backend, isa):
    check_quantize_rows(_forced(backend, isa), max_examples=120)


@pytest.mark.parametrize("backend,isa", ROWS, ids=ids)
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("shape", [(3001, 97), (5, 4099), (3712, 384), (257, 1536)])
def test_large_arrays_split_over_threads(backend, isa, threads, shape):
    rng = np.random.default_rng(sum(shape))
    x = (rng.standard_normal(shape) * 10.0 ** rng.uniform(-4, 4, (shape[0], 1))).astype(np.float32)
    x[::7] = 0.0
    inv = (1.0 / rng.uniform(0.1, 10.0, shape[1])).astype(np.float32)
    for iv in (None, inv):
        q, s = _forced(backend, isa, threads)(x, iv)
        want_q, want_s = _reference(x, iv)
        assert_exact(q, want_q)
        assert_bitwise_equal(s, want_s)


def test_reference_is_the_definition_written_out():
    # Independent of the implementation: multiply, row maximum, divide by 127, then the
    # ONNX rule (np.round is half to even) -- on values away from underflow and overflow.
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((40, 33)) * 5).astype(np.float32)
    x[3] = 0.0
    inv = (1.0 / rng.uniform(0.2, 5.0, 33)).astype(np.float32)
    q, s = quantize_rows_reference(x, inv)
    xs = (x * inv).astype(np.float32)
    a = np.abs(xs).max(axis=1)
    want_s = np.where(a > 0, a / np.float32(127), np.float32(1)).astype(np.float32)
    assert_bitwise_equal(s, want_s)
    assert_exact(q, np.clip(np.round(xs / want_s[:, None]), -127, 127).astype(np.int8))
    # the row maximum lands on +-127, and dequantizing is within half a step
    big = np.abs(q).max(axis=1)
    assert np.all(big[a > 0] == 127) and np.all(big[a == 0] == 0)
    err = np.abs(q.astype(np.float64) * s[:, None] - xs)
    assert np.all(err <= 0.5 * s[:, None].astype(np.float64) * (1 + 1e-6))


@pytest.mark.parametrize("backend,isa", ROWS, ids=ids)
def test_documented_ties_zero_rows_and_underflow(backend, isa):
    run = _forced(backend, isa)
    # s = 1 exactly; .5 ties round to even, -0.5 -> 0
    x = np.array([[127, 0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 126.5, -127]], np.float32)
    q, s = run(x)
    assert s.tolist() == [1.0] and q.tolist() == [[127, 0, 2, 2, 0, -2, -2, 126, -127]]
    # all-zero rows (signed zeros too) and empty rows have scale 1 and q 0
    q, s = run(np.array([[0.0, -0.0, 0.0], [0.0, 0.0, 0.0]], np.float32))
    assert s.tolist() == [1.0, 1.0] and not q.any()
    q, s = run(np.zeros((3, 0), np.float32))
    assert q.shape == (3, 0) and s.tolist() == [1.0, 1.0, 1.0]
    q, s = run(np.zeros((0, 5), np.float32))
    assert q.shape == (0, 5) and s.shape == (0,)
    # a / 127 underflows to 0 for a <= 63 * 2^-149: scale 1, q 0.  Above, a subnormal
    # scale is coarse: a = 64..190 (units of 2^-149) all give s = 2^-149, and the
    # saturation keeps the row maximum at 127; a = 200 gives s = 2 * 2^-149
    x = (np.array([[63, -5], [64, -5], [127, 1], [190, -3], [200, -200]]) * TINY).astype(np.float32)
    q, s = run(x)
    assert s[0] == 1.0 and not q[0].any()
    assert s[1] == np.float32(TINY) and q[1].tolist() == [64, -5]
    assert s[2] == np.float32(TINY) and q[2].tolist() == [127, 1]
    assert s[3] == np.float32(TINY) and q[3].tolist() == [127, -3]
    assert s[4] == np.float32(2 * TINY) and q[4].tolist() == [100, -100]
    # the largest float32 is a valid row maximum
    fmax = np.finfo(np.float32).max
    q, s = run(np.array([[fmax, -fmax / 2, 1.0]], np.float32))
    half = np.float32(-fmax / 2) / s[0]  # -63.5 divided by a rounded scale: just above
    assert s[0] == np.float32(fmax) / np.float32(127) and half > -63.5
    assert q.tolist() == [[127, -63, 0]]


@pytest.mark.parametrize("backend,isa", ROWS, ids=ids)
def test_non_finite_rows_are_refused_naming_the_row(backend, isa):
    run = _forced(backend, isa)
    x = np.ones((70, 40), np.float32)
    for bad, row in ((np.nan, 3), (np.inf, 0), (-np.inf, 69)):
        y = x.copy()
        y[row, 17] = bad
        y[row + 1 if row < 69 else 1, 39] = np.nan if row < 69 else 1.0
        with pytest.raises(ArgumentError, match=rf"x: expected finite values, got NaN or Inf in row {row}$"):
            run(y)
    inv = np.ones(40, np.float32)
    inv[5] = 1e30
    y = x.copy()
    y[11, 5] = 1e10  # finite, but x * inv overflows
    with pytest.raises(ArgumentError, match=r"x \* inv_smooth: row 11 overflows"):
        run(y, inv)
    y[11, 5] = 1.0
    y[2, 0] = np.inf  # Inf * 1: x itself is named
    with pytest.raises(ArgumentError, match="x: expected finite values, got NaN or Inf in row 2"):
        run(y, inv)
    inv[0] = 0.0  # Inf * 0 = NaN: still refused
    with pytest.raises(ArgumentError, match="row 2"):
        run(y, inv)


def test_any_layout_is_made_contiguous_once():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((30, 50)).astype(np.float32)
    want = _reference(x)
    for view in (np.asfortranarray(x), x.T.copy().T, np.repeat(x, 2, axis=1)[:, ::2]):
        for backend, isa in ROWS:
            q, s = _forced(backend, isa)(view)
            assert q.flags.c_contiguous
            assert_exact(q, want[0])
            assert_bitwise_equal(s, want[1])


def test_bad_inputs_name_the_argument():
    x = np.zeros((2, 3), np.float32)
    with pytest.raises(DTypeError, match="x: expected dtype float32, got float64"):
        kernels.quantize_rows(x.astype(np.float64))
    with pytest.raises(ShapeError, match="x: expected a 2-D array"):
        kernels.quantize_rows(np.zeros(3, np.float32))
    with pytest.raises(ShapeError, match="x: expected a 2-D array"):
        kernels.quantize_rows(np.zeros((1, 2, 3), np.float32))
    with pytest.raises(DTypeError, match="x: expected a numpy.ndarray"):
        kernels.quantize_rows("abc")
    with pytest.raises(DTypeError, match="inv_smooth: expected dtype float32"):
        kernels.quantize_rows(x, np.ones(3))
    with pytest.raises(ShapeError, match=r"inv_smooth: expected shape \(3\)"):
        kernels.quantize_rows(x, np.ones(4, np.float32))
    with pytest.raises(ArgumentError, match="inv_smooth: expected finite values"):
        kernels.quantize_rows(x, np.array([1, np.inf, 1], np.float32))


@given(case=strategies.quantize_rows_cases(max_elements=5000))
@settings(max_examples=40)
def test_round_trip_error_is_at_most_half_a_step(case):
    x, inv = case
    q, s = _reference(x, inv)
    xs = (x if inv is None else x * inv).astype(np.float64)
    normal = s >= np.finfo(np.float32).tiny  # subnormal scales: saturation may clip
    err = np.abs(q.astype(np.float64) * s[:, None].astype(np.float64) - xs)[normal]
    # q rounds v = fl(xs / s) = (xs / s)(1 + d), |d| <= u = 2^-24, so
    # |q s - xs| <= s |q - v| + s |v - xs / s| <= s / 2 + u |xs|: a tie of v (x.5 exactly)
    # may sit up to u |xs| beyond half a step (hypothesis found xs / s = 70.500003 -> 70.5).
    # Evaluated in float64, where q s and the bound are exact enough.
    u = 2.0**-24
    bound = 0.5 * s[normal, None].astype(np.float64) + u * np.abs(xs[normal]) * (1 + 1e-9)
    assert np.all(err <= bound)


def test_checker_catches_plausible_wrong_kernels():
    def half_away(x, inv_smooth):
        q, s = _reference(x, inv_smooth)
        xs = x if inv_smooth is None else x * inv_smooth
        v = xs / s[:, None]
        away = np.sign(v) * np.floor(np.abs(v) + 0.5)
        return np.clip(away, -127, 127).astype(np.int8), s

    def reciprocal_scale(x, inv_smooth):  # s = a * (1/127): off by an ulp for many a
        q, s = _reference(x, inv_smooth)
        xs = x if inv_smooth is None else x * inv_smooth
        a = np.abs(xs).max(axis=1, initial=np.float32(0))
        s2 = a * np.float32(1 / 127)
        return q, np.where(s2 == 0, np.float32(1), s2).astype(np.float32)

    for wrong in (half_away, reciprocal_scale):
        with pytest.raises(AssertionError):
            check_quantize_rows(wrong, max_examples=300)
