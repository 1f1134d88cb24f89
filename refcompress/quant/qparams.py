"""Quantization parameters from statistics, and quantize / dequantize by a spec.

Symmetric (weights; the seed's rule):   s = max|x| / (2^(b-1) - 1),   z = 0
Affine (activations):                   s = (max' - min') / (qmax - qmin),
                                        z = clamp(qmin - round(min' / s), qmin, qmax)
with min' = min(min, 0) and max' = max(max, 0), so that 0.0 is exactly representable
(padding and ReLU zeros must quantize without error; Jacob et al. 2018, sec. 2.1).
A range of zero width gets s = 1 (every value is 0 and is exact with any scale).

The arithmetic itself is refcompress.kernels.quantize / dequantize (one rounding rule);
this module only chooses the numbers and reshapes for channel / group granularity.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .. import kernels
from .._validation import check_array, check_axis
from ..errors import ArgumentError, ShapeError
from .spec import QuantSpec


@dataclass(frozen=True)
class QParams:
    """scale (float32) and zero_point (int32), scalars or arrays by granularity, with the
    spec they were chosen for.  Per channel: 1-D over ``spec.axis``.  Per group: shape
    [rows, n_groups] over a 2-D tensor's last axis."""

    scale: np.ndarray
    zero_point: np.ndarray
    spec: QuantSpec


def choose_qparams(min_val, max_val, spec: QuantSpec) -> QParams:
    """QParams covering [min_val, max_val] (scalars or arrays of equal shape) under ``spec``."""
    lo = np.minimum(np.asarray(min_val, np.float64), 0.0)
    hi = np.maximum(np.asarray(max_val, np.float64), 0.0)
    if lo.shape != hi.shape:
        raise ShapeError(f"min_val, max_val: shapes differ, {lo.shape} and {hi.shape}")
    if not (np.all(np.isfinite(lo)) and np.all(np.isfinite(hi))):
        raise ArgumentError("min_val, max_val: expected finite statistics (was calibration run?)")
    qmin, qmax = spec.qmin, spec.qmax
    if spec.symmetric:
        amax = np.maximum(-lo, hi)
        scale = amax / qmax
        zp = np.zeros(lo.shape, np.int64)
    else:
        scale = (hi - lo) / (qmax - qmin)
        zp = None
    scale = np.where(scale > 0, scale, 1.0).astype(np.float32)
    # float32 rounding can make a tiny scale 0 or leave max|x|/s a hair above qmax; the
    # first would be invalid, the second is saturated by the rounding rule.
    scale = np.maximum(scale, np.finfo(np.float32).tiny)
    if zp is None:
        zp = np.clip(qmin - np.rint(lo / scale.astype(np.float64)), qmin, qmax).astype(np.int64)
    return QParams(scale, zp.astype(np.int32), spec)


def tensor_minmax(x, spec: QuantSpec):
    """(min, max) of ``x`` reduced as ``spec``'s granularity needs."""
    x = check_array(x, "x", dtypes=[np.float32, np.float64])
    if spec.granularity == "tensor":
        return (np.min(x), np.max(x)) if x.size else (0.0, 0.0)
    if spec.granularity == "channel":
        axis = check_axis(spec.axis, x.ndim, "spec.axis")
        red = tuple(i for i in range(x.ndim) if i != axis)
        return np.min(x, axis=red), np.max(x, axis=red)
    g = _grouped(x, spec)
    return g.min(axis=-1), g.max(axis=-1)


def _grouped(x, spec: QuantSpec) -> np.ndarray:
    """View a 2-D tensor [rows, cols] as [rows, cols / group_size, group_size]."""
    if x.ndim != 2:
        raise ShapeError(f"x: group granularity expects a 2-D [out, in] tensor, got shape {x.shape}")
    rows, cols = x.shape
    if cols % spec.group_size:
        raise ArgumentError(
            f"group_size: expected a divisor of the input dimension {cols}, got {spec.group_size}"
        )
    return x.reshape(rows, cols // spec.group_size, spec.group_size)


def calibrate(x, spec: QuantSpec) -> QParams:
    """QParams from the min / max of ``x`` itself (weights need no separate observer)."""
    lo, hi = tensor_minmax(x, spec)
    return choose_qparams(lo, hi, spec)


def quantize(x, qp: QParams) -> np.ndarray:
    """Quantize float32 ``x`` with ``qp`` (ONNX QuantizeLinear rule; see docs/semantics.md)."""
    x = check_array(x, "x", dtypes=[np.float32])
    spec = qp.spec
    kw = dict(dtype=spec.dtype, qmin=spec.qmin, qmax=spec.qmax)
    if spec.granularity == "tensor":
        return kernels.quantize(x, qp.scale, qp.zero_point, **kw)
    if spec.granularity == "channel":
        return kernels.quantize(x, qp.scale, qp.zero_point, axis=spec.axis, **kw)
    g = _grouped(x, spec)
    rows, ng, gs = g.shape
    q = kernels.quantize(g.reshape(rows * ng, gs), qp.scale.reshape(-1), qp.zero_point.reshape(-1), axis=0, **kw)
    return q.reshape(x.shape)


def dequantize(q, qp: QParams) -> np.ndarray:
    """float32 (q - z) * s with ``qp``'s granularity."""
    spec = qp.spec
    if spec.granularity == "tensor":
        return kernels.dequantize(q, qp.scale, qp.zero_point)
    if spec.granularity == "channel":
        return kernels.dequantize(q, qp.scale, qp.zero_point, axis=spec.axis)
    rows, cols = q.shape
    ng = cols // spec.group_size
    d = kernels.dequantize(q.reshape(rows * ng, spec.group_size), qp.scale.reshape(-1),
                           qp.zero_point.reshape(-1), axis=0)
    return d.reshape(q.shape)


def fake_quantize(x, qp: QParams):
    """Quantize-dequantize (the simulation QAT trains through) and its STE gradient mask.

    Returns (x_hat, mask): x_hat = dequantize(quantize(x)); mask is 1 where x lies inside
    the representable range [(qmin - z) s, (qmax - z) s] and 0 where it was clipped, so the
    straight-through estimator's backward is grad_x = grad_xhat * mask (Bengio et al. 2013;
    Jacob et al. 2018, sec. 3).  float32 in, float32 out.
    """
    x = check_array(x, "x", dtypes=[np.float32])
    q = quantize(x, qp)
    x_hat = dequantize(q, qp)
    spec = qp.spec
    # The gradient passes where the code before saturation, rint(x / s) + z, is in range.
    s, z = _broadcast_qparams(qp, x.shape)
    with np.errstate(over="ignore", invalid="ignore"):
        r = np.rint(x / s) + z
    mask = ((r >= spec.qmin) & (r <= spec.qmax)).astype(np.float32)
    return x_hat, mask


def _broadcast_qparams(qp: QParams, shape):
    spec = qp.spec
    if spec.granularity == "tensor":
        return np.float32(qp.scale), np.int64(qp.zero_point)
    if spec.granularity == "channel":
        axis = spec.axis % len(shape)
        b = [1] * len(shape)
        b[axis] = -1
        return qp.scale.reshape(b), qp.zero_point.astype(np.int64).reshape(b)
    rows, cols = shape
    rep = lambda a: np.repeat(a.reshape(rows, -1), spec.group_size, axis=1)  # noqa: E731
    return rep(qp.scale), rep(qp.zero_point.astype(np.int64))
