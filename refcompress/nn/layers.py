"""Linear, Conv2d, ReLU, Flatten and Dropout with explicit backward passes.

Weights have PyTorch's shapes (Linear [out, in], Conv2d [out, in/groups, KH, KW]) and
PyTorch's default initialisation (:mod:`refcompress.nn.init`), float32.  Inputs must have
the parameters' dtype (``module.to(np.float64)`` for gradient checks); nothing is cast.
"""

from __future__ import annotations

import math

import numpy as np

from .. import _conv
from .._validation import check_array, check_float, check_int
from ..errors import ArgumentError, DTypeError
from . import functional as F
from .init import get_rng, kaiming_uniform, uniform_bias
from .module import Module, Parameter
from .spec import register_module

__all__ = ["Linear", "Conv2d", "ReLU", "Flatten", "Dropout"]


def _check_bool(value, name):
    if not isinstance(value, (bool, np.bool_)):
        raise DTypeError(f"{name}: expected a bool, got {type(value).__name__} {value!r}")
    return bool(value)


@register_module
class Linear(Module):
    """y = x W^T + b;  x [*, in_features] -> y [*, out_features].

    Backward, with G = dL/dy flattened to [M, out] and X to [M, in]:
        dL/dW = G^T X,   dL/db = sum_rows G,   dL/dx = G W.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, rng=None):
        super().__init__()
        self.in_features = check_int(in_features, "in_features", min_value=1)
        self.out_features = check_int(out_features, "out_features", min_value=1)
        has_bias = _check_bool(bias, "bias")
        gen = get_rng(rng)
        self.weight = Parameter(kaiming_uniform((self.out_features, self.in_features), self.in_features, rng=gen))
        self.bias = Parameter(uniform_bias((self.out_features,), self.in_features, gen)) if has_bias else None
        self._cache = None

    def forward(self, x):
        b = None if self.bias is None else self.bias.data
        y = F.linear(x, self.weight.data, b)
        self._cache = np.asarray(x) if self.training else None
        return y

    def backward(self, grad_out):
        x = self._cache_or_raise()
        g = self._check_grad_out(grad_out, x.shape[:-1] + (self.out_features,))
        g2 = g.reshape(-1, self.out_features)
        self.weight.accumulate_grad(g2.T @ x.reshape(-1, self.in_features))
        if self.bias is not None:
            self.bias.accumulate_grad(g2.sum(axis=0))
        return g @ self.weight.data

    def get_config(self):
        return {"in_features": self.in_features, "out_features": self.out_features,
                "bias": self.bias is not None}


@register_module
class Conv2d(Module):
    """2-D convolution, NCHW (:func:`refcompress.nn.functional.conv2d` for the equation).

    x [N, C_in, H, W] -> y [N, C_out, OH, OW], OH = floor((H + 2p - d(k-1) - 1)/s) + 1.
    weight [C_out, C_in/groups, KH, KW], bias [C_out]; ``groups = C_in = C_out`` is a
    depthwise convolution.  Forward is im2col + one matmul per group; backward, with
    cols = im2col(x) viewed per group and G = dL/dy as [N, G, O/G, P]:

        dL/dW[g] = sum_n G[n, g] cols[n, g]^T,   dL/db = sum_{n, i, j} G,
        dL/dx    = col2im(W[g]^T G[n, g])          (col2im is the adjoint of im2col).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0,
                 dilation=1, groups: int = 1, bias: bool = True, rng=None):
        super().__init__()
        self.in_channels = check_int(in_channels, "in_channels", min_value=1)
        self.out_channels = check_int(out_channels, "out_channels", min_value=1)
        self.kernel_size = _conv.as_pair(kernel_size, "kernel_size", 1)
        self.stride = _conv.as_pair(stride, "stride", 1)
        self.padding = _conv.as_pair(padding, "padding", 0)
        self.dilation = _conv.as_pair(dilation, "dilation", 1)
        self.groups = check_int(groups, "groups", min_value=1)
        if self.in_channels % self.groups or self.out_channels % self.groups:
            raise ArgumentError(
                f"groups: expected a divisor of in_channels={self.in_channels} and "
                f"out_channels={self.out_channels}, got {self.groups}")
        has_bias = _check_bool(bias, "bias")
        gen = get_rng(rng)
        cg = self.in_channels // self.groups
        fan_in = cg * self.kernel_size[0] * self.kernel_size[1]
        self.weight = Parameter(kaiming_uniform((self.out_channels, cg, *self.kernel_size), fan_in, rng=gen))
        self.bias = Parameter(uniform_bias((self.out_channels,), fan_in, gen)) if has_bias else None
        self._cache = None

    def forward(self, x):
        b = None if self.bias is None else self.bias.data
        x, w, b, (s, p, d), g = F._conv_args(x, self.weight.data, b, self.stride, self.padding,
                                             self.dilation, self.groups)
        cols = _conv.im2col(x, self.kernel_size, s, p, d)
        out_hw = tuple(_conv.conv_output_size(x.shape[2 + k], self.kernel_size[k], s[k], p[k], d[k])
                       for k in range(2))
        y = F._conv2d_cols(cols, w, b, g, out_hw)
        self._cache = (cols, x.shape, out_hw) if self.training else None
        return y

    def backward(self, grad_out):
        cols, x_shape, out_hw = self._cache_or_raise()
        N, O, G = x_shape[0], self.out_channels, self.groups
        g = self._check_grad_out(grad_out, (N, O, *out_hw))
        P = out_hw[0] * out_hw[1]
        gg = g.reshape(N, G, O // G, P)
        colsg = cols.reshape(N, G, cols.shape[1] // G, P)   # no -1: N may be 0
        wg = self.weight.data.reshape(G, O // G, -1)
        # einsum's optimizer contracts over (n, p) in one BLAS call per group; a batched
        # matmul against a transposed view falls off BLAS and is ~10x slower.
        self.weight.accumulate_grad(
            np.einsum("ngop,ngkp->gok", gg, colsg, optimize=True).reshape(self.weight.shape))
        if self.bias is not None:
            self.bias.accumulate_grad(g.sum(axis=(0, 2, 3)))
        dcols = np.matmul(wg.swapaxes(-1, -2), gg).reshape(cols.shape)
        return _conv.col2im(dcols, x_shape, self.kernel_size, self.stride, self.padding, self.dilation)

    def get_config(self):
        return {"in_channels": self.in_channels, "out_channels": self.out_channels,
                "kernel_size": list(self.kernel_size), "stride": list(self.stride),
                "padding": list(self.padding), "dilation": list(self.dilation),
                "groups": self.groups, "bias": self.bias is not None}


@register_module
class ReLU(Module):
    """y = max(x, 0);  dL/dx = dL/dy * [x > 0] (the subgradient 0 at x = 0, as PyTorch).

    NaN propagates as in PyTorch (and ``np.maximum``): a NaN input gives a NaN output, and
    its gradient is passed through (PyTorch zeroes the gradient only where x <= 0)."""

    def __init__(self, rng=None):
        super().__init__()
        get_rng(rng)  # no randomness; rng is accepted so every layer takes it
        self._cache = None

    def forward(self, x):
        x = check_array(x, "x", dtypes=F.FLOAT_DTYPES)
        mask = ~(x <= 0)                    # True for x > 0 and for NaN
        self._cache = mask if self.training else None
        return np.where(mask, x, np.zeros((), x.dtype))

    def backward(self, grad_out):
        mask = self._cache_or_raise()
        g = self._check_grad_out(grad_out, mask.shape)
        return np.where(mask, g, np.zeros((), g.dtype))


@register_module
class Flatten(Module):
    """[N, d1, d2, ...] -> [N, d1*d2*...] (row-major, as ``torch.flatten(x, 1)``)."""

    def __init__(self, rng=None):
        super().__init__()
        get_rng(rng)  # no randomness; rng is accepted so every layer takes it
        self._cache = None

    def forward(self, x):
        x = check_array(x, "x", min_ndim=2)
        self._cache = x.shape if self.training else None
        # no -1 (N may be 0); math.prod, not np.prod: that is ~2 us on a tuple
        return x.reshape(x.shape[0], math.prod(x.shape[1:]))

    def backward(self, grad_out):
        shape = self._cache_or_raise()
        g = self._check_grad_out(grad_out, (shape[0], math.prod(shape[1:])))
        return g.reshape(shape)


@register_module
class Dropout(Module):
    """Inverted dropout: in training y = x * m / (1 - p), m_i ~ Bernoulli(1 - p); identity
    in eval.  dL/dx = dL/dy * m / (1 - p).  p = 1 zeroes everything (as PyTorch).

    The mask is drawn from ``rng`` at each training forward; with ``rng=None`` from the
    shared generator of :mod:`refcompress.nn.init` at that time (so ``manual_seed`` before
    training fixes the masks).
    """

    def __init__(self, p: float = 0.5, rng=None):
        super().__init__()
        self.p = check_float(p, "p", min_value=0.0, max_value=1.0)
        if rng is not None:
            get_rng(rng)
        self._rng = rng
        self._cache = None

    def forward(self, x):
        x = check_array(x, "x", dtypes=F.FLOAT_DTYPES)
        if not self.training or self.p == 0.0:
            # a broadcast view of 1 (no memory) with x's shape, so backward checks the shape
            self._cache = np.broadcast_to(np.ones((), x.dtype), x.shape) if self.training else None
            return x.copy() if self.training else x
        keep = get_rng(self._rng).random(x.shape) >= self.p
        scale = 0.0 if self.p == 1.0 else 1.0 / (1.0 - self.p)
        m = keep.astype(x.dtype) * x.dtype.type(scale)
        self._cache = m
        return x * m

    def backward(self, grad_out):
        m = self._cache_or_raise()
        g = check_array(grad_out, "grad_out", dtypes=F.FLOAT_DTYPES)
        if g.shape != m.shape:
            g = self._check_grad_out(g, m.shape)
        return g * m

    def get_config(self):
        return {"p": self.p}
