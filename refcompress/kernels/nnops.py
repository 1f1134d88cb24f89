"""Float32 transformer ops: erf and GELU, LayerNorm over the last axis.

These are the reference definitions the transformer modules (``refcompress.nn``) compute
with; they are written in float64 internally and rounded once to the input's dtype, so the
only error of the reference is the error of its erf formula (below) and that last rounding.

* ``erf``: Abramowitz & Stegun, *Handbook of Mathematical Functions* (1964), eq. 7.1.26,

      erf(x) = 1 - (a1 t + a2 t^2 + a3 t^3 + a4 t^4 + a5 t^5) exp(-x^2),   t = 1 / (1 + p x),

  for x >= 0 and erf(-x) = -erf(x); absolute error <= 1.5e-7 for every x, about one float32
  ulp at 1 (NumPy has no erf, and the library does not depend on SciPy).
* ``gelu``: the exact (erf) form of Hendrycks & Gimpel, "Gaussian Error Linear Units"
  (2016): GELU(x) = x * Phi(x) = x/2 * (1 + erf(x / sqrt 2)).  Its error is
  |x|/2 * 1.5e-7, below float32 resolution of the result for every |x|.
* ``layer_norm``: Ba, Kiros & Hinton, "Layer Normalization" (2016), eq. (4) with an affine
  output: y = (x - mean) / sqrt(var + eps) * gamma + beta over the last axis, ``var`` the
  biased (population) variance, as BERT and PyTorch's LayerNorm compute it.
"""

from __future__ import annotations

import numpy as np

from .._validation import check_array
from ..errors import ArgumentError, ShapeError

__all__ = ["erf", "gelu", "layer_norm", "ERF_ABS_ERROR"]

#: Largest absolute error of :func:`erf` (A&S 7.1.26) before the final rounding.
ERF_ABS_ERROR = 1.5e-7

_P = 0.3275911
_A = (0.254829592, -0.284496736, 1.421413741, -1.453152027, 1.061405429)
_FLOATS = (np.float32, np.float64)


def erf(x) -> np.ndarray:
    """erf(x) by A&S 7.1.26 (|error| <= 1.5e-7); float32 / float64 in, same dtype out."""
    x = check_array(x, "x", dtypes=_FLOATS)
    a = np.abs(x.astype(np.float64))
    t = 1.0 / (1.0 + _P * a)
    poly = t * (_A[0] + t * (_A[1] + t * (_A[2] + t * (_A[3] + t * _A[4]))))
    y = 1.0 - poly * np.exp(-a * a)
    return np.copysign(y, x).astype(x.dtype)


def gelu(x) -> np.ndarray:
    """GELU(x) = x/2 * (1 + erf(x / sqrt 2)) element-wise; float32 / float64, same shape."""
    x = check_array(x, "x", dtypes=_FLOATS)
    x64 = x.astype(np.float64)
    return (0.5 * x64 * (1.0 + erf(x64 * np.sqrt(0.5)))).astype(x.dtype)


def layer_norm(x, weight, bias, eps: float = 1e-12) -> np.ndarray:
    """LayerNorm over the last axis: (x - mean) / sqrt(var + eps) * weight + bias.

    x [..., H] float32 / float64; weight, bias [H] of the same dtype; eps > 0.
    Returns an array of x's shape and dtype.
    """
    x = check_array(x, "x", dtypes=_FLOATS, min_ndim=1)
    h = x.shape[-1]
    weight = check_array(weight, "weight", dtypes=(x.dtype,), shape=(h,))
    bias = check_array(bias, "bias", dtypes=(x.dtype,), shape=(h,))
    if not (isinstance(eps, (int, float, np.floating)) and eps > 0):
        raise ArgumentError(f"eps: expected a positive number, got {eps!r}")
    if h == 0:
        raise ShapeError("x: expected a non-empty last axis")
    x64 = x.astype(np.float64)
    mean = x64.mean(axis=-1, keepdims=True)
    d = x64 - mean
    var = np.mean(d * d, axis=-1, keepdims=True)
    y = d / np.sqrt(var + float(eps)) * weight.astype(np.float64) + bias.astype(np.float64)
    return y.astype(x.dtype)
