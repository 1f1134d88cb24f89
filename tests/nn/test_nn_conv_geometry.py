"""refcompress._conv: output size, im2col against its definition, col2im as its adjoint."""

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from refcompress import _conv
from refcompress.errors import ArgumentError, DTypeError, ShapeError


@st.composite
def geometries(draw):
    k = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    s = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    p = (draw(st.integers(0, 2)), draw(st.integers(0, 2)))
    d = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    hw = tuple(max(1, d[i] * (k[i] - 1) + 1 - 2 * p[i]) + draw(st.integers(0, 4)) for i in range(2))
    n, c = draw(st.integers(1, 2)), draw(st.integers(1, 3))
    return (n, c) + hw, k, s, p, d


def im2col_definition(x, k, s, p, d):
    N, C, H, W = x.shape
    oh = (H + 2 * p[0] - d[0] * (k[0] - 1) - 1) // s[0] + 1
    ow = (W + 2 * p[1] - d[1] * (k[1] - 1) - 1) // s[1] + 1
    xp = np.pad(x, ((0, 0), (0, 0), (p[0], p[0]), (p[1], p[1])))
    cols = np.zeros((N, C * k[0] * k[1], oh * ow), x.dtype)
    for n in range(N):
        for c in range(C):
            for a in range(k[0]):
                for b in range(k[1]):
                    for i in range(oh):
                        for j in range(ow):
                            cols[n, (c * k[0] + a) * k[1] + b, i * ow + j] = xp[
                                n, c, i * s[0] + a * d[0], j * s[1] + b * d[1]]
    return cols


@settings(max_examples=25)
@given(geometries(), st.integers(0, 2**31))
def test_im2col_matches_definition_and_col2im_is_its_adjoint(geo, seed):
    shape, k, s, p, d = geo
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape)
    cols = _conv.im2col(x, k, s, p, d)
    np.testing.assert_array_equal(cols, im2col_definition(x, k, s, p, d))
    c = rng.standard_normal(cols.shape)
    back = _conv.col2im(c, shape, k, s, p, d)
    assert back.shape == shape and back.flags.c_contiguous
    # <im2col(x), c> == <x, col2im(c)>; both sides sum the same products in another order
    lhs, rhs = np.sum(cols * c), np.sum(x * back)
    assert abs(lhs - rhs) <= 1e-10 * (1 + np.sum(np.abs(cols * c)))


def test_col2im_counts_how_often_each_pixel_is_read():
    # 3x3 kernel, stride 1, padding 1 on 4x4: corner pixels are read 4 times, edges 6, inside 9
    cols = np.ones((1, 9, 16))
    counts = _conv.col2im(cols, (1, 1, 4, 4), 3, 1, 1)[0, 0]
    np.testing.assert_array_equal(counts, [[4, 6, 6, 4], [6, 9, 9, 6], [6, 9, 9, 6], [4, 6, 6, 4]])


def test_im2col_accepts_non_contiguous_input_and_pad_value():
    x = np.arange(2 * 3 * 6 * 10, dtype=np.float32).reshape(2, 3, 6, 10)[:, :, :, ::2]
    assert not x.flags.c_contiguous
    np.testing.assert_array_equal(_conv.im2col(x, 2, 1, 0), _conv.im2col(x.copy(), 2, 1, 0))
    padded = _conv.im2col(x, 3, 1, 1, pad_value=-np.inf)
    assert np.isneginf(padded[0, 0, 0])  # tap (0, 0) of output (0, 0) reads the padding


@pytest.mark.parametrize("size,k,s,p,d,expect", [
    (7, 3, 1, 0, 1, 5), (7, 3, 2, 1, 1, 4), (5, 3, 1, 0, 2, 1), (1, 1, 1, 0, 1, 1), (8, 2, 2, 0, 1, 4),
])
def test_conv_output_size(size, k, s, p, d, expect):
    assert _conv.conv_output_size(size, k, s, p, d) == expect


@pytest.mark.parametrize("kwargs,err,match", [
    (dict(kernel_size=0), ArgumentError, "kernel_size"),
    (dict(kernel_size=(2, 2, 2)), ArgumentError, "kernel_size"),
    (dict(stride=0), ArgumentError, "stride"),
    (dict(padding=-1), ArgumentError, "padding"),
    (dict(dilation=0), ArgumentError, "dilation"),
    (dict(kernel_size=2.0), DTypeError, "kernel_size"),
    (dict(kernel_size=9), ShapeError, "x: spatial size"),
])
def test_im2col_rejects_bad_geometry(kwargs, err, match):
    args = dict(kernel_size=3)
    args.update(kwargs)
    with pytest.raises(err, match=match):
        _conv.im2col(np.zeros((1, 1, 5, 5)), **args)


def test_im2col_and_col2im_reject_bad_arrays():
    with pytest.raises(ShapeError, match="x: expected a 4-D array"):
        _conv.im2col(np.zeros((1, 5, 5)), 3)
    with pytest.raises(ShapeError, match="cols: expected shape"):
        _conv.col2im(np.zeros((1, 8, 9)), (1, 1, 5, 5), 3)
    with pytest.raises(ShapeError, match="input_shape"):
        _conv.col2im(np.zeros((1, 9, 9)), (5, 5), 3)
