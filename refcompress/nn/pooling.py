"""Pooling layers over NCHW inputs: MaxPool2d, AvgPool2d, GlobalAvgPool2d.

MaxPool2d and AvgPool2d read the same windows as a convolution (:mod:`refcompress._conv`):
per channel, cols[n, c, k, p] is tap k of output pixel p's window, so

    max:  y[n, c, p] = max_k cols[n, c, k, p]        (padding reads -inf, as PyTorch)
    avg:  y[n, c, p] = (1 / (KH*KW)) sum_k cols[n, c, k, p]
                       (padding reads 0 and counts: PyTorch's count_include_pad=True)

and the backward sends dL/dy to the arg-max tap (the first one on ties, as PyTorch) or
equally to every tap, then col2im adds the taps back onto the input pixels.
"""

from __future__ import annotations

import numpy as np

from .. import _conv
from .._validation import check_array
from ..errors import ArgumentError
from . import functional as F
from .init import get_rng
from .module import Module
from .spec import register_module

__all__ = ["MaxPool2d", "AvgPool2d", "GlobalAvgPool2d"]


class _Pool2d(Module):
    def __init__(self, kernel_size, stride=None, padding=0, rng=None):
        super().__init__()
        get_rng(rng)  # no randomness; rng is accepted so every layer takes it
        self.kernel_size = _conv.as_pair(kernel_size, "kernel_size", 1)
        self.stride = self.kernel_size if stride is None else _conv.as_pair(stride, "stride", 1)
        self.padding = _conv.as_pair(padding, "padding", 0)
        # PyTorch's rule: more padding than half a window would create all-padding windows.
        if any(p > k // 2 for p, k in zip(self.padding, self.kernel_size)):
            raise ArgumentError(
                f"padding: expected at most half the kernel size {self.kernel_size}, got {self.padding}")
        self._cache = None

    def _cols(self, x, pad_value):
        x = check_array(x, "x", dtypes=F.FLOAT_DTYPES, ndim=4)
        N, C, H, W = x.shape
        cols = _conv.im2col(x, self.kernel_size, self.stride, self.padding, 1, pad_value=pad_value)
        out_hw = tuple(_conv.conv_output_size((H, W)[k], self.kernel_size[k], self.stride[k],
                                              self.padding[k]) for k in range(2))
        # explicit sizes (no -1): a reshape cannot infer a size when N = 0
        K, P = self.kernel_size[0] * self.kernel_size[1], out_hw[0] * out_hw[1]
        return x.shape, cols.reshape(N, C, K, P), out_hw

    def _to_input(self, dcols, x_shape):
        N, C = x_shape[:2]
        return _conv.col2im(dcols.reshape(N, C * dcols.shape[2], dcols.shape[-1]), x_shape, self.kernel_size,
                            self.stride, self.padding, 1)

    def get_config(self):
        return {"kernel_size": list(self.kernel_size), "stride": list(self.stride),
                "padding": list(self.padding)}


@register_module
class MaxPool2d(_Pool2d):
    """Max over each KH x KW window: [N, C, H, W] -> [N, C, OH, OW]; stride defaults to the
    kernel size.  dL/dx: each output's gradient goes to its window's (first) maximum."""

    def forward(self, x):
        x_shape, cols, out_hw = self._cols(x, -np.inf)
        idx = np.argmax(cols, axis=2)[:, :, None, :]
        y = np.take_along_axis(cols, idx, axis=2)
        self._cache = (idx, x_shape, out_hw, cols.shape) if self.training else None
        return y.reshape(*x_shape[:2], *out_hw)

    def backward(self, grad_out):
        idx, x_shape, out_hw, cols_shape = self._cache_or_raise()
        g = self._check_grad_out(grad_out, (*x_shape[:2], *out_hw))
        dcols = np.zeros(cols_shape, dtype=g.dtype)
        np.put_along_axis(dcols, idx, g.reshape(*x_shape[:2], 1, cols_shape[3]), axis=2)
        return self._to_input(dcols, x_shape)


@register_module
class AvgPool2d(_Pool2d):
    """Mean over each KH x KW window (padding counted): [N, C, H, W] -> [N, C, OH, OW].
    dL/dx: each output's gradient / (KH*KW) to every tap of its window."""

    def forward(self, x):
        x_shape, cols, out_hw = self._cols(x, 0.0)
        self._cache = (x_shape, out_hw, cols.shape) if self.training else None
        return cols.mean(axis=2).reshape(*x_shape[:2], *out_hw)

    def backward(self, grad_out):
        x_shape, out_hw, cols_shape = self._cache_or_raise()
        g = self._check_grad_out(grad_out, (*x_shape[:2], *out_hw))
        k = cols_shape[2]
        dcols = np.broadcast_to((g / g.dtype.type(k)).reshape(*x_shape[:2], 1, cols_shape[3]), cols_shape)
        return self._to_input(np.ascontiguousarray(dcols), x_shape)


@register_module
class GlobalAvgPool2d(Module):
    """y[n, c] = mean_{h, w} x[n, c, h, w]:  [N, C, H, W] -> [N, C];
    dL/dx[n, c, h, w] = dL/dy[n, c] / (H*W)."""

    def __init__(self, rng=None):
        super().__init__()
        get_rng(rng)  # no randomness; rng is accepted so every layer takes it
        self._cache = None

    def forward(self, x):
        x = check_array(x, "x", dtypes=F.FLOAT_DTYPES, ndim=4, contiguous=True)
        self._cache = x.shape if self.training else None
        return x.mean(axis=(2, 3))

    def backward(self, grad_out):
        shape = self._cache_or_raise()
        g = self._check_grad_out(grad_out, shape[:2])
        hw = shape[2] * shape[3]
        return np.ascontiguousarray(
            np.broadcast_to((g / g.dtype.type(hw))[:, :, None, None], shape))
