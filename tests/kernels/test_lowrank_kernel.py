"""The factored-Linear kernel: every backend and ISA variant.

float32: within the derived summation bound of the exact (float64) result, element-wise.
int8: bit-exact against the composition of the two qgemm references."""

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import refcompress.kernels as kernels
from refcompress.errors import ArgumentError, DTypeError, ShapeError
from refcompress.kernels.lowrank import gamma, lowrank_error_bound
from refcompress.testing import assert_exact, kernel_variants

F32 = kernel_variants("lowrank_linear")
Q8 = kernel_variants("lowrank_linear_q8")


def _id(v):
    return f"{v[0]}-{v[1]}" if v[1] else v[0]


# Sizes below / at / above the 6- and 3-row tiles, the 32-column panels, the 48-row blocks.
ROWS = st.sampled_from([0, 1, 2, 3, 5, 6, 7, 13, 47, 48, 49, 97])
COLS = st.sampled_from([1, 2, 15, 16, 17, 31, 32, 33, 64, 65, 100])


def _exact(x, v, u, b):
    y = (x.astype(np.float64) @ v.T.astype(np.float64)) @ u.T.astype(np.float64)
    return y if b is None else y + b


@st.composite
def f32_cases(draw):
    B, n, r, m = draw(ROWS), draw(COLS), draw(COLS), draw(COLS)
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    scale = draw(st.sampled_from([1.0, 1e-20, 1e20]))
    x = (rng.standard_normal((B, n)) * scale).astype(np.float32)
    v = rng.standard_normal((r, n)).astype(np.float32)
    u = rng.standard_normal((m, r)).astype(np.float32)
    b = rng.standard_normal(m).astype(np.float32) * np.float32(scale) if draw(st.booleans()) else None
    return x, v, u, b


@pytest.mark.parametrize("variant", F32, ids=_id)
@pytest.mark.parametrize("threads", [1, 2])
def test_fp32_within_the_summation_bound(variant, threads):
    @settings(max_examples=50)
    @given(case=f32_cases())
    def run(case):
        x, v, u, b = case
        with kernels.use(*variant, threads=threads):
            y = kernels.lowrank_linear(x, v, u, b)
        assert y.dtype == np.float32 and y.shape == (x.shape[0], u.shape[0])
        err = np.abs(y.astype(np.float64) - _exact(x, v, u, b))
        bound = lowrank_error_bound(x, v, u, b)
        bad = err > bound
        assert not bad.any(), f"{bad.sum()} elements exceed the bound; worst {np.max(err / np.maximum(bound, 1e-300))}"

    run()


@pytest.mark.parametrize("variant", F32, ids=_id)
def test_fp32_large_batch_parallel_paths_and_packed_reuse(variant):
    rng = np.random.default_rng(0)
    v = rng.standard_normal((40, 300)).astype(np.float32)
    u = rng.standard_normal((130, 40)).astype(np.float32)
    b = rng.standard_normal(130).astype(np.float32)
    p = kernels.pack_lowrank(v, u, b)
    for B in (1, 20, 300):  # column split with a barrier; row blocks
        x = rng.standard_normal((B, 300)).astype(np.float32)
        for threads in (1, 2):
            with kernels.use(*variant, threads=threads):
                y = kernels.lowrank_linear(x, p)
            assert np.all(np.abs(y - _exact(x, v, u, b)) <= lowrank_error_bound(x, v, u, b))


def test_bound_is_tight_enough_to_catch_a_kernel_that_rounds_h_to_bfloat16():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((8, 64)).astype(np.float32)
    v = rng.standard_normal((16, 64)).astype(np.float32)
    u = rng.standard_normal((32, 16)).astype(np.float32)
    h = (x @ v.T).view(np.uint32) & np.uint32(0xFFFF0000)  # truncate h to bfloat16
    wrong = h.view(np.float32) @ u.T
    assert np.any(np.abs(wrong - _exact(x, v, u, None)) > lowrank_error_bound(x, v, u, None))
    assert gamma(1) == pytest.approx(2.0**-24, rel=1e-6)


@st.composite
def q8_cases(draw):
    B, n, r, m = draw(ROWS), draw(COLS), draw(COLS), draw(COLS)
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    v = rng.standard_normal((r, n)).astype(np.float32)
    u = rng.standard_normal((m, r)).astype(np.float32)
    b = rng.standard_normal(m).astype(np.float32) if draw(st.booleans()) else None
    xs = draw(st.floats(1e-3, 1.0))
    hs = draw(st.floats(1e-3, 10.0))
    q = kernels.QuantizedLowRank(v, u, b, xs, draw(st.integers(0, 255)), hs, draw(st.integers(0, 255)))
    # x_q across the whole uint8 range, so requantization saturates in some cases
    x_q = rng.integers(0, 256, (B, n)).astype(np.uint8)
    return x_q, q


@pytest.mark.parametrize("variant", Q8, ids=_id)
def test_int8_bit_exact_against_the_reference(variant):
    @settings(max_examples=40)
    @given(case=q8_cases(), threads=st.sampled_from([1, 2]))
    def run(case, threads):
        x_q, q = case
        with kernels.use("numpy"):
            want = kernels.lowrank_linear_q8(x_q, q)
        with kernels.use(*variant, threads=threads):
            got = kernels.lowrank_linear_q8(x_q, q)
        assert_exact(got, want, what="lowrank_linear_q8")

    run()


def test_int8_reference_is_the_written_out_integer_arithmetic():
    rng = np.random.default_rng(2)
    v = rng.standard_normal((6, 20)).astype(np.float32)
    u = rng.standard_normal((9, 6)).astype(np.float32)
    b = rng.standard_normal(9).astype(np.float32)
    x = rng.standard_normal((5, 20)).astype(np.float32)
    q = kernels.QuantizedLowRank.calibrate(v, u, b, x)
    xq = q.quantize_input(x)
    acc1 = (xq.astype(np.int64) - q.x_zero_point) @ q.v_q.T.astype(np.int64)
    m1 = (q.x_scale * q.v_scale / q.h_scale).astype(np.float32)
    hq = np.clip(np.rint(acc1.astype(np.float32) * m1) + q.h_zero_point, 0, 255).astype(np.uint8)
    acc2 = (hq.astype(np.int64) - q.h_zero_point) @ q.u_q.T.astype(np.int64) + q.bias_q
    want = acc2.astype(np.float32) * (q.h_scale * q.u_scale).astype(np.float32)
    with kernels.use("numpy"):
        assert_exact(kernels.lowrank_linear_q8(xq, q), want)
    # and it approximates the float layer
    y = (x @ v.T) @ u.T + b
    assert np.max(np.abs(want - y)) < 0.1 * np.max(np.abs(y))


def test_bad_inputs_name_the_argument():
    v = np.ones((3, 5), np.float32)
    u = np.ones((4, 3), np.float32)
    x = np.ones((2, 5), np.float32)
    with pytest.raises(DTypeError, match="x: expected dtype float32"):
        kernels.lowrank_linear(x.astype(np.float64), v, u)
    with pytest.raises(ShapeError, match="x: expected shape"):
        kernels.lowrank_linear(np.ones((2, 6), np.float32), v, u)
    with pytest.raises(ShapeError, match="u: expected shape"):
        kernels.lowrank_linear(x, v, np.ones((4, 2), np.float32))
    with pytest.raises(ShapeError, match="bias"):
        kernels.lowrank_linear(x, v, u, np.ones(3, np.float32))
    with pytest.raises(ArgumentError, match="u: expected the second factor"):
        kernels.lowrank_linear(x, v)
    with pytest.raises(ArgumentError, match="pack_lowrank"):
        kernels.lowrank_linear(x, kernels.pack_lowrank(v, u), u)
    q = kernels.QuantizedLowRank(v, u, None, 0.1, 0, 0.1, 0)
    with pytest.raises(DTypeError, match="x_q"):
        kernels.lowrank_linear_q8(x, q)
    with pytest.raises(ArgumentError, match="h_scale"):
        kernels.QuantizedLowRank(v, u, None, 0.1, 0, 0.0, 0)
    with pytest.raises(ArgumentError, match="x_zero_point"):
        kernels.QuantizedLowRank(v, u, None, 0.1, 300, 0.1, 0)
