"""refcompress.quant core: specs, qparams, quantize by granularity, fake quant, packing."""

import numpy as np
import pytest
from hypothesis import given, strategies as st

from refcompress import quant as Q
from refcompress.errors import ArgumentError, ShapeError


@pytest.mark.parametrize("bits", [2, 3, 4, 8, 16])
def test_spec_ranges(bits):
    s = Q.QuantSpec(bits)
    assert (s.qmin, s.qmax) == (-(2 ** (bits - 1)) + 1, 2 ** (bits - 1) - 1)
    a = Q.QuantSpec(bits, signed=False, symmetric=False)
    assert (a.qmin, a.qmax) == (0, 2**bits - 1)
    assert s.dtype == (np.int8 if bits <= 8 else np.int16)


@pytest.mark.parametrize("kw,match", [
    (dict(bits=1), "bits"), (dict(bits=9), "bits"), (dict(bits=17), "bits"),
    (dict(granularity="group"), "group_size"), (dict(group_size=4), "group_size"),
    (dict(signed=False), "symmetric"), (dict(granularity="row"), "granularity"),
])
def test_spec_rejects_bad_arguments(kw, match):
    with pytest.raises(ArgumentError, match=match):
        Q.QuantSpec(**kw)


def test_symmetric_rule_is_max_abs_over_qmax():
    x = np.array([-3.0, 1.0, 2.5], np.float32)
    qp = Q.calibrate(x, Q.QuantSpec(8))
    assert qp.scale == np.float32(3.0 / 127) and qp.zero_point == 0
    np.testing.assert_array_equal(Q.quantize(x, qp), [-127, 42, 106])


def test_affine_rule_represents_zero_exactly():
    x = np.array([0.3, 1.7, 5.0], np.float32)  # range widened to include 0
    spec = Q.QuantSpec(8, signed=False, symmetric=False, narrow_range=False)
    qp = Q.calibrate(x, spec)
    assert qp.zero_point == 0 and qp.scale == np.float32(5.0 / 255)
    qp2 = Q.calibrate(np.array([-1.0, 3.0], np.float32), spec)
    zero = Q.dequantize(Q.quantize(np.zeros(1, np.float32), qp2), qp2)
    assert zero[0] == 0.0


def test_zero_tensor_gets_unit_scale():
    qp = Q.calibrate(np.zeros(5, np.float32), Q.QuantSpec(8))
    assert qp.scale == 1.0


@given(
    rows=st.integers(1, 9), groups=st.integers(1, 5), gs=st.sampled_from([1, 3, 8, 32]),
    bits=st.sampled_from([2, 3, 4, 8]), gran=st.sampled_from(["tensor", "channel", "group"]),
    seed=st.integers(0, 2**31),
)
def test_round_trip_error_is_half_a_step(rows, groups, gs, bits, gran, seed):
    x = (np.random.default_rng(seed).standard_normal((rows, groups * gs)) * 3).astype(np.float32)
    spec = Q.QuantSpec(bits, granularity=gran, group_size=gs if gran == "group" else None)
    qp = Q.calibrate(x, spec)
    q = Q.quantize(x, qp)
    assert q.min() >= spec.qmin and q.max() <= spec.qmax
    err = np.abs(Q.dequantize(q, qp) - x)
    if gran == "tensor":
        s = np.full(x.shape, qp.scale)
    elif gran == "channel":
        s = np.broadcast_to(qp.scale[:, None], x.shape)
    else:
        assert qp.scale.shape == (rows, groups)
        s = np.repeat(qp.scale, gs, axis=1)
    assert np.all(err <= s * (0.5 + 1e-5) + np.abs(x) * 1e-6)


def test_group_size_must_divide_the_input_dimension():
    with pytest.raises(ArgumentError, match="group_size"):
        Q.calibrate(np.zeros((2, 10), np.float32), Q.QuantSpec(4, granularity="group", group_size=4))
    with pytest.raises(ShapeError, match="2-D"):
        Q.calibrate(np.zeros((2, 2, 4), np.float32), Q.QuantSpec(4, granularity="group", group_size=4))


def test_fake_quantize_and_straight_through_mask():
    qp = Q.calibrate(np.array([-1.0, 1.0], np.float32), Q.QuantSpec(4))  # s = 1/7, codes -7..7
    x = np.array([-2.0, -1.0, 0.33, 0.99, 1.0 + 0.5 / 7 + 1e-3, 5.0], np.float32)
    x_hat, mask = Q.fake_quantize(x, qp)
    np.testing.assert_array_equal(x_hat, Q.dequantize(Q.quantize(x, qp), qp))
    np.testing.assert_array_equal(mask, [0, 1, 1, 1, 0, 0])


@given(bits=st.integers(1, 16), signed=st.booleans(), n=st.integers(0, 200), seed=st.integers(0, 2**31))
def test_pack_unpack_round_trip(bits, signed, n, seed):
    rng = np.random.default_rng(seed)
    lo, hi = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
    dtype = (np.int8 if signed else np.uint8) if bits <= 8 else (np.int16 if signed else np.uint16)
    v = rng.integers(lo, hi + 1, n).astype(dtype)
    p = Q.pack_bits(v, bits)
    assert p.dtype == np.uint8 and p.size == Q.packed_nbytes(n, bits) == (n * bits + 7) // 8
    np.testing.assert_array_equal(Q.unpack_bits(p, bits, n, signed=signed), v)


def test_int4_layout_is_two_per_byte_low_nibble_first():
    p = Q.pack_bits(np.array([1, -2, 7], np.int8), 4)
    np.testing.assert_array_equal(p, [0xE1, 0x07])


def test_pack_rejects_values_out_of_range():
    with pytest.raises(ArgumentError, match="values"):
        Q.pack_bits(np.array([8], np.int8), 4)
    with pytest.raises(ArgumentError, match="packed"):
        Q.unpack_bits(np.zeros(1, np.uint8), 4, 3, signed=True)
