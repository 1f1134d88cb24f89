"""AdaRound: learned rounding of weights (Nagel et al., "Up or Down? Adaptive Rounding for
Post-Training Quantization", ICML 2020).

Rounding to nearest is not optimal for a layer's *output*: AdaRound chooses, per weight,
floor or ceil of W / s by minimising the output error on calibration inputs X:

    W~(V) = s * clip(floor(W / s) + h(V), qmin, qmax)
    h(V)  = clip(sigmoid(V) (zeta - gamma) + gamma, 0, 1),   zeta = 1.1, gamma = -0.1
    min_V  || W X - W~(V) X ||_F^2 / n  +  lambda * sum_i (1 - |2 h(V_i) - 1|^beta)

(eq. 21-25), with beta annealed from 20 to 2 so the regulariser pushes h to {0, 1}; V is
initialised so that h(V) = frac(W / s) (rounding starts at the nearest choice), optimised
with Adam.  The result is on the quantization grid: every W~ / s is floor or ceil of W / s.
Works on Linear weights [out, in] with inputs X [in, n], or conv weights with im2col'd
inputs (pass [out, in*kh*kw] and X [in*kh*kw, n]).
"""

from __future__ import annotations

import numpy as np

from .._validation import check_array, check_float, check_int
from ..errors import ArgumentError, DTypeError, ShapeError

ZETA, GAMMA = 1.1, -0.1


def _h(v):
    return np.clip(1 / (1 + np.exp(-v)) * (ZETA - GAMMA) + GAMMA, 0.0, 1.0)


def adaround(w, x, scale, *, qmin: int, qmax: int, iters: int = 1000, lr: float = 1e-2,
             reg: float = 0.01, beta=(20.0, 2.0), warmup: float = 0.2, seed: int = 0):
    """Learn the rounding of ``w`` [out, in] for inputs ``x`` [in, n].

    scale : per-tensor float or per-output-channel [out] (weights symmetric, zero point 0),
            positive and finite.
    qmin, qmax : the integer range, qmin <= qmax.
    beta  : (start, end) of the regulariser's exponent, both positive.
    Returns the integer codes [out, in] (int64, in [qmin, qmax]) of W~ / s.
    """
    w = check_array(w, "w", dtypes=[np.float32, np.float64], ndim=2).astype(np.float64)
    x = check_array(x, "x", dtypes=[np.float32, np.float64], ndim=2).astype(np.float64)
    if x.shape[0] != w.shape[1]:
        raise ShapeError(f"x: expected {w.shape[1]} rows (the layer's inputs), got shape {x.shape}")
    if x.shape[1] == 0:
        raise ArgumentError(f"x: expected at least one sample (column), got shape {x.shape}")
    iters = check_int(iters, "iters", min_value=1)
    lr = check_float(lr, "lr", min_value=0.0, min_inclusive=False)
    qmin = check_int(qmin, "qmin")
    qmax = check_int(qmax, "qmax")
    if qmin > qmax:
        raise ArgumentError(f"qmin, qmax: expected qmin <= qmax, got {qmin} > {qmax}")
    reg = check_float(reg, "reg", min_value=0.0)
    warmup = check_float(warmup, "warmup", min_value=0.0, max_value=1.0)
    if not isinstance(beta, (tuple, list)) or len(beta) != 2:
        raise ArgumentError(f"beta: expected a pair (start, end), got {beta!r}")
    beta = tuple(check_float(b, f"beta[{i}]", min_value=0.0, min_inclusive=False) for i, b in enumerate(beta))
    s = check_array(scale, "scale", ndim=(0, 1), finite=True)
    if s.dtype.kind not in "fiu":
        raise DTypeError(f"scale: expected real numbers, got dtype {s.dtype.name}")
    s = s.astype(np.float64)
    if s.ndim == 1 and s.shape[0] != w.shape[0]:
        raise ShapeError(f"scale: expected one scale per output row ({w.shape[0]}) or a scalar, got {s.shape[0]}")
    if np.any(s <= 0):
        raise ArgumentError("scale: expected positive scales")
    s = s.reshape(-1, 1) if s.ndim == 1 else s
    base = np.floor(w / s)
    frac = w / s - base
    # h(V) = frac at the start: invert the rectified sigmoid
    p = np.clip((frac - GAMMA) / (ZETA - GAMMA), 1e-4, 1 - 1e-4)
    v = np.log(p / (1 - p))
    m = np.zeros_like(v)
    u = np.zeros_like(v)
    b1, b2, eps = 0.9, 0.999, 1e-8
    target = w @ x
    n = x.shape[1]
    for t in range(1, iters + 1):
        sig = 1 / (1 + np.exp(-v))
        h = np.clip(sig * (ZETA - GAMMA) + GAMMA, 0.0, 1.0)
        codes = base + h
        inside = (codes >= qmin) & (codes <= qmax)
        wq = s * np.clip(codes, qmin, qmax)
        diff = wq @ x - target
        grad_wq = 2.0 * diff @ x.T / n
        grad_h = grad_wq * s * inside
        # the regulariser switches on after the warm-up, beta decaying linearly
        if t > warmup * iters:
            frac_t = (t - warmup * iters) / max((1 - warmup) * iters, 1)
            bt = beta[0] + (beta[1] - beta[0]) * frac_t
            z = 2 * h - 1
            grad_h = grad_h + reg * (-bt * np.abs(z) ** (bt - 1) * np.sign(z) * 2)
        dh_dv = np.where((h > 0) & (h < 1), sig * (1 - sig) * (ZETA - GAMMA), 0.0)
        g = grad_h * dh_dv
        m = b1 * m + (1 - b1) * g
        u = b2 * u + (1 - b2) * g * g
        v -= lr * (m / (1 - b1**t)) / (np.sqrt(u / (1 - b2**t)) + eps)
    up = _h(v) >= 0.5
    return np.clip(base + up, qmin, qmax).astype(np.int64)
