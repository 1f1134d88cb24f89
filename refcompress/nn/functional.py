"""Stateless functions shared by the layers and losses: softmax family, linear, conv2d.

Each function is the algorithm; the layers in :mod:`refcompress.nn.layers` wrap them with
parameters and a cached backward.  :func:`conv2d_naive` is the definition of a convolution
written as loops, kept beside the fast :func:`conv2d` so tests (and readers) compare them.
"""

from __future__ import annotations

import numpy as np

from .. import _conv
from .._validation import check_array, check_axis, check_int
from ..errors import ArgumentError, ShapeError

__all__ = [
    "FLOAT_DTYPES",
    "logsumexp",
    "softmax",
    "log_softmax",
    "linear",
    "conv2d",
    "conv2d_naive",
]

FLOAT_DTYPES = (np.float16, np.float32, np.float64)


def logsumexp(x, axis: int = -1, keepdims: bool = False) -> np.ndarray:
    """log sum_k exp(x_k) along ``axis``, as m + log sum exp(x - m) with m = max x.

    Subtracting the maximum keeps every exponent <= 0, so nothing overflows for large
    logits and at least one term is exactly 1 (the log never sees 0).
    """
    x = check_array(x, "x", dtypes=FLOAT_DTYPES, min_ndim=1)
    axis = check_axis(axis, x.ndim)
    m = np.max(x, axis=axis, keepdims=True)
    m = np.where(np.isfinite(m), m, 0)
    out = np.log(np.sum(np.exp(x - m), axis=axis, keepdims=True)) + m
    return out if keepdims else np.squeeze(out, axis=axis)


def log_softmax(x, axis: int = -1) -> np.ndarray:
    """log softmax(x) = x - logsumexp(x), stable for large |x|; same shape and dtype."""
    x = check_array(x, "x", dtypes=FLOAT_DTYPES, min_ndim=1)
    return x - logsumexp(x, axis=axis, keepdims=True)


def softmax(x, axis: int = -1) -> np.ndarray:
    """softmax(x)_k = exp(x_k - m) / sum_j exp(x_j - m), m = max x; same shape and dtype."""
    x = check_array(x, "x", dtypes=FLOAT_DTYPES, min_ndim=1)
    axis = check_axis(axis, x.ndim)
    e = np.exp(x - np.max(x, axis=axis, keepdims=True))
    return e / np.sum(e, axis=axis, keepdims=True)


def linear(x, weight, bias=None) -> np.ndarray:
    """y = x W^T + b for x [*, in], W [out, in], b [out] -> y [*, out]."""
    weight = check_array(weight, "weight", dtypes=FLOAT_DTYPES, ndim=2)
    x = check_array(x, "x", dtypes=(weight.dtype,), min_ndim=1)
    if x.shape[-1] != weight.shape[1]:
        raise ShapeError(f"x: expected last dimension {weight.shape[1]} (in_features), got shape {x.shape}")
    y = x @ weight.T
    if bias is not None:
        bias = check_array(bias, "bias", dtypes=(weight.dtype,), shape=(weight.shape[0],))
        y = y + bias
    return y


def _conv_args(x, weight, bias, stride, padding, dilation, groups):
    weight = check_array(weight, "weight", dtypes=FLOAT_DTYPES, ndim=4)
    x = check_array(x, "x", dtypes=(weight.dtype,), ndim=4)
    groups = check_int(groups, "groups", min_value=1)
    O, Cg = weight.shape[:2]
    if O % groups:
        raise ArgumentError(f"groups: expected a divisor of out_channels={O}, got {groups}")
    if x.shape[1] != Cg * groups:
        raise ShapeError(
            f"x: expected {Cg * groups} channels (weight in/groups={Cg} x groups={groups}), "
            f"got shape {x.shape}")
    if bias is not None:
        bias = check_array(bias, "bias", dtypes=(weight.dtype,), shape=(O,))
    geo = (_conv.as_pair(stride, "stride", 1), _conv.as_pair(padding, "padding", 0),
           _conv.as_pair(dilation, "dilation", 1))
    return x, weight, bias, geo, groups


def _conv2d_cols(cols, weight, bias, groups, out_hw):
    """y from the patch matrix: one matmul per group, batched over images and groups.

    cols [N, C*KH*KW, P] viewed as [N, G, Cg*KH*KW, P]; weight viewed as [G, O/G, Cg*KH*KW];
    y[n, g] = W[g] @ cols[n, g]  ->  [N, O, OH, OW].
    """
    N, P = cols.shape[0], cols.shape[2]
    O = weight.shape[0]
    wg = weight.reshape(groups, O // groups, -1)
    # explicit sizes (no -1): a reshape cannot infer a size when N = 0
    y = np.matmul(wg, cols.reshape(N, groups, cols.shape[1] // groups, P)).reshape(N, O, *out_hw)
    if bias is not None:
        y += bias.reshape(1, O, 1, 1)
    return y


def conv2d(x, weight, bias=None, stride=1, padding=0, dilation=1, groups: int = 1) -> np.ndarray:
    """2-D convolution (cross-correlation), NCHW, PyTorch's ``F.conv2d`` semantics:

        y[n, o, i, j] = b[o] + sum_{c, a, b'} W[o, c, a, b'] *
                        x_pad[n, g*Cg + c, i*s_h + a*d_h, j*s_w + b'*d_w],   g = o // (O/G)

    x [N, C, H, W], weight [O, C/G, KH, KW], bias [O] or None; computed as im2col and
    per-group matrix products.  Returns [N, O, OH, OW] in x's dtype.
    """
    x, weight, bias, (s, p, d), groups = _conv_args(x, weight, bias, stride, padding, dilation, groups)
    kh, kw = weight.shape[2:]
    cols = _conv.im2col(x, (kh, kw), s, p, d)
    out_hw = tuple(_conv.conv_output_size(x.shape[2 + k], (kh, kw)[k], s[k], p[k], d[k]) for k in range(2))
    return _conv2d_cols(cols, weight, bias, groups, out_hw)


def conv2d_naive(x, weight, bias=None, stride=1, padding=0, dilation=1, groups: int = 1) -> np.ndarray:
    """The same convolution as :func:`conv2d`, written as the definition's loops (slow)."""
    x, weight, bias, ((sh, sw), (ph, pw), (dh, dw)), groups = _conv_args(
        x, weight, bias, stride, padding, dilation, groups)
    N, C, H, W = x.shape
    O, Cg, KH, KW = weight.shape
    Og = O // groups
    OH = _conv.conv_output_size(H, KH, sh, ph, dh)
    OW = _conv.conv_output_size(W, KW, sw, pw, dw)
    xp = np.zeros((N, C, H + 2 * ph, W + 2 * pw), dtype=x.dtype)
    xp[:, :, ph : ph + H, pw : pw + W] = x
    y = np.zeros((N, O, OH, OW), dtype=x.dtype)
    for n in range(N):
        for o in range(O):
            g = o // Og
            for i in range(OH):
                for j in range(OW):
                    acc = 0.0 if bias is None else float(bias[o])
                    for c in range(Cg):
                        for a in range(KH):
                            for b in range(KW):
                                acc += float(weight[o, c, a, b]) * float(
                                    xp[n, g * Cg + c, i * sh + a * dh, j * sw + b * dw])
                    y[n, o, i, j] = acc
    return y
