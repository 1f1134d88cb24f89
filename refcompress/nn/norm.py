"""Batch normalisation with PyTorch's semantics (Ioffe & Szegedy 2015).

Per channel c, over the M = N (x L, x H x W) values of the batch:

    training:  mu = mean(x),  var = mean((x - mu)^2)        (biased: used to normalise)
               x_hat = (x - mu) / sqrt(var + eps),  y = gamma * x_hat + beta
               running_mean <- (1 - m) running_mean + m mu
               running_var  <- (1 - m) running_var  + m var * M / (M - 1)   (unbiased)
               with m = momentum, or m = 1 / num_batches_tracked when momentum is None
               (a cumulative average)
    eval:      y = gamma * (x - running_mean) / sqrt(running_var + eps) + beta

Backward (training), with dx_hat = dL/dy * gamma and sums over the batch axes:

    dL/dgamma = sum dL/dy * x_hat,      dL/dbeta = sum dL/dy,
    dL/dx = (1 / M) / sqrt(var + eps) * (M dx_hat - sum dx_hat - x_hat sum(dx_hat x_hat)).

Buffers running_mean, running_var (parameter dtype) and num_batches_tracked (int64) are
named as in PyTorch, so the state dicts are interchangeable.
"""

from __future__ import annotations

import numpy as np

from .._validation import check_array, check_float, check_int
from ..errors import DTypeError, ShapeError
from .init import get_rng
from .module import Module, Parameter
from .spec import register_module

__all__ = ["BatchNorm1d", "BatchNorm2d"]


class _BatchNorm(Module):
    _ndims: tuple = ()

    def __init__(self, num_features: int, eps: float = 1e-5, momentum=0.1, affine: bool = True,
                 rng=None):
        super().__init__()
        self.num_features = check_int(num_features, "num_features", min_value=1)
        self.eps = check_float(eps, "eps", min_value=0.0, min_inclusive=False)
        self.momentum = None if momentum is None else check_float(momentum, "momentum", min_value=0.0, max_value=1.0)
        if not isinstance(affine, (bool, np.bool_)):
            raise DTypeError(f"affine: expected a bool, got {type(affine).__name__} {affine!r}")
        self.affine = bool(affine)
        get_rng(rng)  # the init is deterministic; rng is accepted so every layer takes it
        C = self.num_features
        if self.affine:
            self.weight = Parameter(np.ones(C, np.float32))
            self.bias = Parameter(np.zeros(C, np.float32))
        else:
            self.weight = None
            self.bias = None
        self.register_buffer("running_mean", np.zeros(C, np.float32))
        self.register_buffer("running_var", np.ones(C, np.float32))
        self.register_buffer("num_batches_tracked", np.zeros((), np.int64))
        self._cache = None

    def _check_input(self, x):
        # contiguous: the batch sums then run in one order whatever the caller's layout
        x = check_array(x, "x", dtypes=(self.running_mean.dtype,), ndim=self._ndims, contiguous=True)
        if x.shape[1] != self.num_features:
            raise ShapeError(f"x: expected {self.num_features} channels on axis 1, got shape {x.shape}")
        return x

    def forward(self, x):
        x = self._check_input(x)
        axes = (0,) + tuple(range(2, x.ndim))
        bshape = (1, self.num_features) + (1,) * (x.ndim - 2)
        if self.training:
            M = x.size // self.num_features
            if M < 2:
                raise ShapeError(
                    f"x: expected more than 1 value per channel in training, got shape {x.shape}")
            mu = x.mean(axis=axes)
            var = x.var(axis=axes)
            self.num_batches_tracked = np.array(self.num_batches_tracked + 1, np.int64)
            m = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
            dt = self.running_mean.dtype
            self.running_mean = ((1 - m) * self.running_mean + m * mu).astype(dt)
            self.running_var = ((1 - m) * self.running_var + m * var * (M / (M - 1))).astype(dt)
        else:
            mu, var = self.running_mean, self.running_var
        inv_std = 1.0 / np.sqrt(var + x.dtype.type(self.eps))
        x_hat = (x - mu.reshape(bshape)) * inv_std.reshape(bshape)
        self._cache = (x_hat, inv_std, axes, bshape) if self.training else None
        if not self.affine:
            return x_hat
        return x_hat * self.weight.data.reshape(bshape) + self.bias.data.reshape(bshape)

    def backward(self, grad_out):
        x_hat, inv_std, axes, bshape = self._cache_or_raise()
        g = self._check_grad_out(grad_out, x_hat.shape)
        M = x_hat.size // self.num_features
        if self.affine:
            self.weight.accumulate_grad((g * x_hat).sum(axis=axes))
            self.bias.accumulate_grad(g.sum(axis=axes))
            dxh = g * self.weight.data.reshape(bshape)
        else:
            dxh = g
        s1 = dxh.sum(axis=axes).reshape(bshape)
        s2 = (dxh * x_hat).sum(axis=axes).reshape(bshape)
        return (inv_std.reshape(bshape) / M) * (M * dxh - s1 - x_hat * s2)

    def get_config(self):
        return {"num_features": self.num_features, "eps": self.eps, "momentum": self.momentum,
                "affine": self.affine}


@register_module
class BatchNorm1d(_BatchNorm):
    """Batch norm over [N, C] or [N, C, L] (statistics per channel C)."""

    _ndims = (2, 3)


@register_module
class BatchNorm2d(_BatchNorm):
    """Batch norm over [N, C, H, W] (statistics per channel C)."""

    _ndims = (4,)
