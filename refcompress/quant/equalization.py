"""Data-free corrections before quantization (Nagel et al., "Data-Free Quantization
Through Weight Equalization and Bias Correction", ICCV 2019).

Cross-layer equalization (sec. 4.1): for two layers y = W2 f(W1 x + b1) with f positively
homogeneous (ReLU: f(s z) = s f(z) for s > 0), rescaling channel i of the middle by s_i,

    W1' = S^-1 W1,   b1' = S^-1 b1,   W2' = W2 S,     S = diag(s),

leaves the function unchanged.  Choosing s_i = sqrt(r1_i / r2_i), with r1_i the range of
row i of W1 and r2_i the range of column i of W2, makes both ranges sqrt(r1_i r2_i): the
per-tensor quantization grid then fits every channel about equally well (eq. 7-8).

Bias correction (sec. 4.2): quantizing W to W~ shifts the expected output by
(W~ - W) E[x]; subtracting it from the bias restores the mean (eq. 11):

    b' = b - (W~ - W) E[x]

These work on weight arrays (Linear [out, in] or Conv2d [out, in, kh, kw]); the model-level
passes apply them to pairs of layers.
"""

from __future__ import annotations

import numpy as np

from .._validation import check_array
from ..errors import ShapeError


def _rows(w):
    return w.reshape(w.shape[0], -1)


def equalization_scales(w1, w2) -> np.ndarray:
    """s_i = sqrt(r1_i / r2_i) for the channels between two layers (ranges = max |.|).

    w1 : [C, ...] (its output channels), w2 : [O, C, ...] (its input channels).  Channels
    whose range is zero in either layer keep s = 1.
    """
    w1 = check_array(w1, "w1", dtypes=[np.float32, np.float64], min_ndim=2)
    w2 = check_array(w2, "w2", dtypes=[np.float32, np.float64], min_ndim=2)
    if w2.shape[1] != w1.shape[0]:
        raise ShapeError(f"w1, w2: w1 has {w1.shape[0]} output channels but w2 takes {w2.shape[1]} inputs")
    r1 = np.abs(_rows(w1)).max(axis=1).astype(np.float64)
    r2 = np.abs(np.moveaxis(w2, 1, 0).reshape(w2.shape[1], -1)).max(axis=1).astype(np.float64)
    ok = (r1 > 0) & (r2 > 0)
    s = np.ones_like(r1)
    s[ok] = np.sqrt(r1[ok] / r2[ok])
    return s


def equalize_pair(w1, b1, w2, scales=None):
    """Apply W1' = S^-1 W1, b1' = S^-1 b1, W2' = W2 S; returns (w1', b1', w2', s).

    b1 may be None.  The function W2 relu(W1 x + b1) is unchanged (up to float rounding).
    """
    s = equalization_scales(w1, w2) if scales is None else np.asarray(scales, np.float64)
    shape1 = (-1,) + (1,) * (w1.ndim - 1)
    shape2 = (1, -1) + (1,) * (w2.ndim - 2)
    w1n = (w1 / s.reshape(shape1)).astype(w1.dtype)
    b1n = None if b1 is None else (b1 / s).astype(b1.dtype)
    w2n = (w2 * s.reshape(shape2)).astype(w2.dtype)
    return w1n, b1n, w2n, s


def bias_correction(w, w_quant, input_mean) -> np.ndarray:
    """The bias correction -(W~ - W) E[x] to add to a layer's bias.

    Linear: w [out, in], input_mean [in] (mean of the layer's input).  Conv2d: w [out, in,
    kh, kw], input_mean [in] (mean per input channel; the kernel's spatial sum multiplies
    it, exact away from the borders, as in the paper).  Returns float [out].
    """
    w = check_array(w, "w", dtypes=[np.float32, np.float64], min_ndim=2)
    w_quant = check_array(w_quant, "w_quant", dtypes=[np.float32, np.float64], shape=w.shape)
    mu = check_array(input_mean, "input_mean", dtypes=[np.float32, np.float64], ndim=1)
    if mu.shape[0] != w.shape[1]:
        raise ShapeError(f"input_mean: expected {w.shape[1]} entries (the layer's inputs), got {mu.shape[0]}")
    err = (w_quant.astype(np.float64) - w.astype(np.float64))
    if err.ndim > 2:
        err = err.reshape(err.shape[0], err.shape[1], -1).sum(axis=2)
    return -(err @ mu.astype(np.float64))
