"""LSQ: learned step size quantization (Esser et al., "Learned Step Size Quantization",
ICLR 2020).

Forward (eq. 1-2), for a tensor v with step s and integer range [Q_N, Q_P]:

    v_bar = clip(round(v / s), Q_N, Q_P),        v_hat = v_bar * s

Backward with the straight-through estimator for round (eq. 3):

    d v_hat / d v = 1                       if Q_N < v / s < Q_P, else 0
    d v_hat / d s = -v/s + round(v/s)       if Q_N < v / s < Q_P
                    Q_N                     if v / s <= Q_N
                    Q_P                     if v / s >= Q_P

and the step's gradient is scaled by g = 1 / sqrt(N * Q_P) (sec. 2.2), N the number of
elements the step covers, so that its updates are commensurate with the weights'.
Initialisation: s = 2 mean(|v|) / sqrt(Q_P).
"""

from __future__ import annotations

import numpy as np

from .._validation import check_array


def lsq_init_step(v, qmax: int) -> float:
    """The paper's initial step 2 mean|v| / sqrt(Q_P) (1.0 for an all-zero tensor)."""
    v = check_array(v, "v", dtypes=[np.float32, np.float64])
    s = 2.0 * float(np.mean(np.abs(v))) / np.sqrt(qmax) if v.size else 0.0
    return s if s > 0 else 1.0


def lsq_forward(v, step: float, qmin: int, qmax: int):
    """v_hat = clip(round(v / s), Q_N, Q_P) * s (round half to even, as everywhere here).
    Returns (v_hat, v / s) -- the second is what the backward needs."""
    v = check_array(v, "v", dtypes=[np.float32, np.float64])
    r = v / step
    return (np.clip(np.rint(r), qmin, qmax) * step).astype(v.dtype), r


def lsq_backward(grad_out, r, qmin: int, qmax: int):
    """(grad_v, grad_step) from the upstream gradient and r = v / s (eq. 3, scaled by g)."""
    inside = (r > qmin) & (r < qmax)
    grad_v = grad_out * inside
    ds = np.where(inside, np.rint(r) - r, np.where(r <= qmin, qmin, qmax))
    g = 1.0 / np.sqrt(r.size * qmax) if r.size else 0.0
    return grad_v.astype(grad_out.dtype), float(np.sum(grad_out * ds) * g)
