"""quantize / dequantize: every backend and ISA variant, bit-exact against the reference."""

import numpy as np
import pytest
from hypothesis import given, strategies as st

import refcompress.kernels as kernels
from refcompress.errors import ArgumentError, DTypeError, ShapeError
from refcompress.kernels.quantize import dequantize_reference, quantize_reference
from refcompress.testing import (
    assert_bitwise_equal,
    assert_exact,
    check_dequantize,
    check_quantize,
    kernel_variants,
    strategies,
)

QUANT = kernel_variants("quantize")
DEQUANT = kernel_variants("dequantize")
ids = [f"{b}-{i}" if i else b for b, i in QUANT]


def _forced(fn, backend, isa, threads=None):
    def run(*args, **kwargs):
        with kernels.use(backend, isa=isa, threads=threads):
            return fn(*args, **kwargs)
    return run


@pytest.mark.parametrize("backend,isa", QUANT, ids=ids)
def test_quantize_matches_reference(backend, isa):
    check_quantize(_forced(kernels.quantize, backend, isa), max_examples=150)


@pytest.mark.parametrize("backend,isa", DEQUANT, ids=ids)
def test_dequantize_matches_reference(backend, isa):
    check_dequantize(_forced(kernels.dequantize, backend, isa), max_examples=150)


@pytest.mark.parametrize("backend,isa", QUANT, ids=ids)
@pytest.mark.parametrize("threads", [1, 2])
def test_large_arrays_split_over_threads(backend, isa, threads):
    # Big enough to cross the parallel threshold and the 8192-element work blocks, with a
    # length that is a multiple of no vector width.
    rng = np.random.default_rng(7)
    x = (rng.standard_normal((3, 70001)) * 40).astype(np.float32)
    s = np.array([0.25, 0.3, 1e-3], np.float32)
    z = np.array([-128, 5, 127])
    with kernels.use(backend, isa=isa, threads=threads):
        q = kernels.quantize(x, s, z, axis=0)
        d = kernels.dequantize(q, s, z, axis=0)
    with kernels.use("numpy"):
        assert_exact(q, kernels.quantize(x, s, z, axis=0))
        assert_bitwise_equal(d, kernels.dequantize(q, s, z, axis=0))


@pytest.mark.parametrize("backend,isa", QUANT, ids=ids)
def test_documented_rounding_ties_and_specials(backend, isa):
    x = np.array([0.5, 1.5, 2.5, -0.5, -1.5, -2.5, np.nan, np.inf, -np.inf, 126.5, 127.5],
                 np.float32)
    with kernels.use(backend, isa=isa):
        q = kernels.quantize(x, 1.0, 0)
        qn = kernels.quantize(x, 1.0, 0, qmin=-127)
        qu = kernels.quantize(x, 1.0, 10, dtype=np.uint8)
    np.testing.assert_array_equal(q, [0, 2, 2, 0, -2, -2, 0, 127, -128, 126, 127])
    np.testing.assert_array_equal(qn[8], -127)
    np.testing.assert_array_equal(qu, [10, 12, 12, 10, 8, 8, 10, 255, 0, 136, 138])


def test_reference_is_the_onnx_rule_written_out():
    # The definition, independent of the implementation: divide, round half to even,
    # add the zero point, saturate -- on values far from any NaN / clamp subtlety.
    rng = np.random.default_rng(0)
    x = rng.uniform(-3, 3, 1000).astype(np.float32)
    s = np.float32(0.0173)
    want = np.clip(np.round(x / s) + 3, -128, 127).astype(np.int8)
    got = quantize_reference(x, np.array([s]), np.array([3], np.int32), None, np.int8, -128, 127)
    assert_exact(got, want)
    back = dequantize_reference(got, np.array([s]), np.array([3], np.int32), None)
    assert_exact(back, ((want.astype(np.float32) - 3) * s).astype(np.float32))


@given(case=strategies.quantize_cases(dtypes=(np.int8,)))
def test_round_trip_error_is_at_most_half_a_step_inside_the_range(case):
    with kernels.use("numpy"):
        q = kernels.quantize(case.x, case.scale, case.zero_point, axis=case.axis, dtype=case.dtype,
                             qmin=case.qmin, qmax=case.qmax)
        back = kernels.dequantize(q, case.scale, case.zero_point, axis=case.axis)
    if case.axis is None:
        s = np.full(case.x.shape, case.scale, np.float64)
    else:
        bshape = [1] * case.x.ndim
        bshape[case.axis] = -1
        s = np.broadcast_to(np.asarray(case.scale, np.float64).reshape(bshape), case.x.shape)
    x, q, back, s = (np.ravel(a) for a in (case.x, q, back, s))
    inside = np.isfinite(x) & (q > case.qmin) & (q < case.qmax)
    err = np.abs(back.astype(np.float64) - x.astype(np.float64))
    # half a step from rounding, plus float32 rounding of the division and the product
    assert np.all(err[inside] <= 0.5 * s[inside] * (1 + 1e-5) + np.abs(x[inside]) * 2e-7)


def test_bad_inputs_name_the_argument():
    x = np.zeros((2, 3), np.float32)
    with pytest.raises(DTypeError, match="x: expected dtype float32, got float64"):
        kernels.quantize(x.astype(np.float64), 1.0)
    with pytest.raises(ArgumentError, match="scale"):
        kernels.quantize(x, 0.0)
    with pytest.raises(ArgumentError, match="scale"):
        kernels.quantize(x, float("nan"))
    with pytest.raises(ArgumentError, match="scale"):
        kernels.quantize(x, 1e-50)  # underflows to 0 as float32
    with pytest.raises(ShapeError, match=r"scale: expected shape \(3,\)"):
        kernels.quantize(x, np.ones(2, np.float32), 0, axis=1)
    with pytest.raises(ShapeError, match="scale: expected a scalar"):
        kernels.quantize(x, np.ones(3, np.float32))
    with pytest.raises(ArgumentError, match="zero_point"):
        kernels.quantize(x, 1.0, 128)
    with pytest.raises(ArgumentError, match="zero_point"):
        kernels.quantize(x, 1.0, -1, dtype=np.uint8)
    with pytest.raises(ArgumentError, match="zero_point"):
        kernels.quantize(x, 1.0, -128, qmin=-127)
    with pytest.raises(DTypeError, match="zero_point"):
        kernels.quantize(x, 1.0, 0.5)
    with pytest.raises(ArgumentError, match="axis"):
        kernels.quantize(x, np.ones(3, np.float32), 0, axis=2)
    with pytest.raises(DTypeError, match="dtype"):
        kernels.quantize(x, 1.0, dtype=np.int32)
    with pytest.raises(ArgumentError, match="qmin, qmax"):
        kernels.quantize(x, 1.0, qmin=5, qmax=4)
    with pytest.raises(ArgumentError, match="qmax"):
        kernels.quantize(x, 1.0, qmax=300)
    with pytest.raises(DTypeError, match="q: expected dtype"):
        kernels.dequantize(x, 1.0)
    with pytest.raises(DTypeError, match="x: expected a numpy.ndarray"):
        kernels.quantize("abc", 1.0)
    # NumPy scalars take the plain-number path: the same checks, the same messages
    with pytest.raises(ArgumentError, match="scale"):
        kernels.quantize(x, np.float32(0.0))
    with pytest.raises(ArgumentError, match="scale"):
        kernels.quantize(x, np.float64(1e-50))
    with pytest.raises(ArgumentError, match="zero_point"):
        kernels.quantize(x, np.float32(1.0), np.int64(256), dtype=np.uint8)
    with pytest.raises(DTypeError, match="zero_point"):
        kernels.quantize(x, np.float32(1.0), True)


def test_numpy_scalar_parameters_give_what_python_numbers_give():
    # a float64 scale is rounded to float32 either way (the ONNX scale is float32)
    x = np.random.default_rng(3).standard_normal((4, 33)).astype(np.float32) * 50
    for scale in (0.1, 1 / 3, 0.7):
        want = quantize_reference(x, np.float32(scale), np.int32(7), None, np.uint8, 0, 255)
        assert_exact(kernels.quantize(x, scale, 7, dtype=np.uint8), want, what="Python numbers")
        for s_ in (np.float32(scale), np.float64(scale)):
            for z in (np.int32(7), np.uint8(7), np.int64(7)):
                assert_exact(kernels.quantize(x, s_, z, dtype=np.uint8), want, what=f"{type(s_)} {type(z)}")


def test_checker_catches_a_kernel_that_rounds_half_away_from_zero():
    def wrong(x, scale, zero_point, *, axis, dtype, qmin, qmax):
        with kernels.use("numpy"):
            q = kernels.quantize(x, scale, zero_point, axis=axis, dtype=dtype, qmin=qmin, qmax=qmax)
        s = np.asarray(scale, np.float32)
        if axis is None:
            with np.errstate(over="ignore"):  # huge x / tiny s -> inf: kept as the reference's q below
                r = x / s
            away = np.where(np.isfinite(r), np.sign(r) * np.floor(np.abs(r) + 0.5), 0)
            alt = np.clip(away + zero_point, qmin, qmax).astype(dtype)
            return np.where(np.isfinite(r), alt, q)
        return q

    with pytest.raises(AssertionError):
        check_quantize(wrong, max_examples=300)


def test_kept_per_tensor_parameters_stay_read_only():
    import importlib

    qmod = importlib.import_module("refcompress.kernels.quantize")  # the module (the package exports the function)

    x = np.ones((1, 4), np.float32)
    kernels.quantize(x, 0.125, 3, dtype=np.uint8)
    for a in qmod._PER_TENSOR[(0.125, 3)]:
        with pytest.raises(ValueError):
            a.flags.writeable = True
