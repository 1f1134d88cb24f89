"""Soft-target distillation (Hinton, Vinyals & Dean 2015, "Distilling the Knowledge in a
Neural Network", arXiv:1503.02531).

With p_t = softmax(z_t / T) and p_s = softmax(z_s / T) per sample,

    KD(z_s, z_t)  = T^2 * (1/N) sum_i KL(p_t,i || p_s,i)
    dKD / dz_s    = T * (p_s - p_t) / N

and the student objective mixes it with the hard-label cross-entropy,

    L = alpha * CE(z_s, y) + (1 - alpha) * KD(z_s, z_t),       alpha in [0, 1].

Why T^2: d KL / d z_s = (p_s - p_t) / T, and for large T (with zero-mean logits) p_s - p_t
~ (z_s - z_t) / (C T), so the soft gradient shrinks like 1 / T^2.  Multiplying by T^2 keeps
the soft term's gradient on the same scale as the hard term's whatever T is, so alpha means
the same thing at every temperature (Hinton et al. 2015, section 2).

Numerics.  At large T the KL is a second-order quantity, ~|z_s - z_t|^2 / T^2; formed as
sum p_t (log p_t - log p_s) from log-probabilities that agree to O(1/T) (absolute error
~eps log C each), the cancellation error times T^2 swamps it once |z|/T ~ sqrt(eps), i.e.
T ~ 1e7 |z| in float64 (T ~ 1e3 in float32), and T^2 overflows beyond T ~ 1e154 (its
relative error grows like eps (T / span)^2, span = max_k D - min_k D).  So for every row
whose logit differences D = z_t - z_s span at most T / 1000 (the large-T rows; the switch
point is explained in :func:`soft_target_loss`) the value is computed without
cancellation, in float64, from

    d = D / T,   w_k = log(p_t,k / p_s,k) = d_k - log sum_j p_s,j e^{d_j}   (|w_k| <= 1)
    T^2 KL = sum_k p_s,k (T w_k)^2 g(w_k),   g(w) = (w e^w - e^w + 1) / w^2
    T (p_s - p_t) = -p_s (T w) (e^w - 1) / w

(KL = sum p_s r log r = sum p_s (r log r - r + 1) with r = p_t / p_s = e^w, since
sum p_s r = 1; g(w) = 1/2 + w/3 + w^2/8 + ... by its series for small |w|, and T w =
D - T log E_s[e^d] with T log E_s[e^d] = (log1p(m)/m) E_s[D expm1(d)/d], m = E_s[expm1(d)],
so no quantity scales with T^2 or underflows).  As T -> inf this tends to the closed form
T^2 KL -> 1/2 (mean_k D^2 - (mean_k D)^2) (Hinton et al. 2015, section 2.1, "matching
logits"), reached to float64 precision for any finite T.  Rows whose differences span more
than T / 1000 (ordinary T, where the plain formula's relative error is <~ 4e-7) use
:func:`refcompress.nn.losses.kl_div` (log-softmax based, stable for logits of any magnitude).  Both are evaluated in float64
whatever the logits' dtype; the gradient is returned in the logits' dtype.
"""

from __future__ import annotations

import numpy as np

from .._validation import check_array, check_float
from ..errors import ArgumentError, ShapeError
from ..nn.functional import FLOAT_DTYPES
from ..nn.losses import cross_entropy, kl_div

__all__ = ["soft_target_loss", "distillation_loss", "check_temperature", "check_unit_weight"]


def check_temperature(temperature, name: str = "temperature") -> float:
    """``temperature`` as a float > 0, or ArgumentError naming ``name``."""
    return check_float(temperature, name, min_value=0.0, min_inclusive=False)


def check_unit_weight(value, name: str) -> float:
    """A convex-mix weight as a float in [0, 1], or ArgumentError naming ``name``."""
    return check_float(value, name, min_value=0.0, max_value=1.0)


def _check_logits(student_logits, teacher_logits):
    s = check_array(student_logits, "student_logits", dtypes=FLOAT_DTYPES, ndim=2)
    t = check_array(teacher_logits, "teacher_logits", dtypes=(s.dtype,), ndim=2)
    if t.shape[1] != s.shape[1]:
        raise ShapeError(
            f"teacher_logits: expected {s.shape[1]} classes (as student_logits), got "
            f"{t.shape[1]} (teacher and student must predict the same classes)")
    if s.shape[1] == 0:
        raise ShapeError(f"student_logits: expected at least one class, got shape {s.shape}")
    if t.shape[0] != s.shape[0]:
        raise ShapeError(
            f"teacher_logits: expected {s.shape[0]} rows (as student_logits), got shape {t.shape}")
    return s, t


def _ratio(f, x):
    """f(x) / x with its limit 1 at x = 0 (f = expm1 or log1p)."""
    out = np.ones_like(x)
    nz = x != 0
    out[nz] = f(x[nz]) / x[nz]
    return out


def _g(w):
    """g(w) = (w e^w - e^w + 1) / w^2 = sum_{n>=2} (n-1)/n! w^(n-2); series for |w| < 1e-2
    (truncation < 1e-18 relative), the closed form (relative error ~eps/|w|) above."""
    out = np.empty_like(w)
    small = np.abs(w) < 1e-2
    x = w[small]
    out[small] = 1 / 2 + x * (1 / 3 + x * (1 / 8 + x * (1 / 30 + x * (1 / 144 + x * (1 / 840 + x / 5760)))))
    x = w[~small]
    out[~small] = (x * np.exp(x) - np.expm1(x)) / (x * x)
    return out


def _kd_rows_close(s, t, T):
    """Per row ``T^2 KL(p_t || p_s)`` and ``T (p_s - p_t)`` for float64 rows, without
    cancellation (see the module docstring; valid while the logit differences span at most
    T, so |w| <= 1; the caller passes the rows spanning at most T / _PLAIN_MAX_RATIO)."""
    D = t - s
    a = s / T
    ps = np.exp(a - a.max(axis=1, keepdims=True))
    ps /= ps.sum(axis=1, keepdims=True)
    d = D / T
    m = (ps * np.expm1(d)).sum(axis=1, keepdims=True)                   # E_s[e^d] - 1
    TL = _ratio(np.log1p, m) * (ps * D * _ratio(np.expm1, d)).sum(axis=1, keepdims=True)
    Tw = D - TL                                                          # T log(p_t / p_s)
    w = Tw / T
    value = (ps * Tw * Tw * _g(w)).sum(axis=1)
    grad = -ps * Tw * _ratio(np.expm1, w)
    return value, grad


# rows whose logit differences span more than T / _PLAIN_MAX_RATIO use the plain kl_div
# formula (relative error <~ 4e-7 there); see soft_target_loss
_PLAIN_MAX_RATIO = 1e3


def soft_target_loss(student_logits, teacher_logits, temperature: float = 4.0):
    """Hinton's soft-target loss ``T^2 * mean_i KL(softmax(t_i/T) || softmax(s_i/T))``
    (Hinton, Vinyals & Dean 2015, eq. of section 2).

    student_logits, teacher_logits : [N, C], C >= 1, same floating dtype.
    Returns ``(value, grad)``: value a Python float, grad = d value / d student_logits,
    [N, C] in the logits' dtype, equal to ``T * (p_s - p_t) / N``.  Accurate for any finite
    T > 0 (large T: tends to 1/2 mean_i [mean_k D^2 - (mean_k D)^2], D = z_t - z_s); see the
    module docstring for how.

    Which computation: a row whose differences D span at most T / 1000 (max_k D - min_k D
    <= T / _PLAIN_MAX_RATIO) takes the cancellation-free large-T path; every other row the
    plain ``T^2 * kl_div``.  The plain formula's relative error grows like
    eps * (T / span)^2: measured against 60-digit arithmetic it is <= 1e-10 at T / span =
    100, <= 4e-7 at 1000 (C = 10 .. 1000), but 2e-4 at 1e4 and O(1) by 1e6, while the
    large-T path stays at ~1e-15.  So at ordinary temperatures (T <~ 1000 x the logit
    spread, e.g. T = 0.5 .. 100 for logit differences spanning >= 0.1) the result is
    bit-identical to the plain formula and as fast; when no row needs the large-T path the
    whole batch goes through ``kl_div`` in one call.
    """
    s, t = _check_logits(student_logits, teacher_logits)
    T = check_temperature(temperature)
    s64, t64 = s.astype(np.float64, copy=False), t.astype(np.float64, copy=False)
    N = s.shape[0]
    if N == 0:
        raise ShapeError(f"student_logits: expected a non-empty batch, got shape {s.shape}")
    with np.errstate(invalid="ignore", over="ignore"):
        # the switch only needs the span roughly: in the logits' dtype (an overflow to inf,
        # or NaN, takes the plain formula, as it should); reduced over the leading axis of a
        # transposed copy, ~10x faster than max(axis=1) for few classes
        Dt = np.ascontiguousarray((t - s).T)
        close = (Dt.max(axis=0) - Dt.min(axis=0)) * _PLAIN_MAX_RATIO <= T
    if not close.any():
        # the plain formula, bit for bit as before the large-T path was added
        value, grad = kl_div(s64, t64, temperature=T)
        T2 = T * T
        return value * T2, (grad * T2).astype(s.dtype, copy=False)
    value, grad = 0.0, np.empty_like(s64)
    v, g = _kd_rows_close(s64[close], t64[close], T)
    value += float(v.sum()) / N
    grad[close] = g / N
    far = ~close
    if far.any():
        n_far = int(far.sum())
        v, g = kl_div(s64[far], t64[far], temperature=T)
        T2 = T * T
        value += v * T2 * (n_far / N)
        grad[far] = g * (T2 * n_far / N)
    return value, grad.astype(s.dtype, copy=False)


def distillation_loss(student_logits, teacher_logits, target=None, *, temperature: float = 4.0,
                      alpha: float = 0.5):
    """``alpha * CE(s, y) + (1 - alpha) * T^2 KL(p_t || p_s)``, Hinton et al. 2015.

    student_logits, teacher_logits : [N, C], same floating dtype.
    target   : int class indices [N], or None for unlabeled transfer data (then alpha must
               be 0: there is no hard label to weigh).
    alpha    : weight of the hard-label term, in [0, 1].
    Returns ``(value, grad)`` with grad = d value / d student_logits, [N, C].
    """
    s, t = _check_logits(student_logits, teacher_logits)
    alpha = check_unit_weight(alpha, "alpha")
    T = check_temperature(temperature)
    value, grad = 0.0, np.zeros_like(s)
    if alpha > 0.0:
        if target is None:
            raise ArgumentError(
                f"alpha: expected 0 for unlabeled data (target is None), got {alpha}")
        ce, gce = cross_entropy(s, target)
        value += alpha * ce
        grad += s.dtype.type(alpha) * gce
    if alpha < 1.0:
        kd, gkd = soft_target_loss(s, t, T)
        value += (1.0 - alpha) * kd
        grad += s.dtype.type(1.0 - alpha) * gkd
    return value, grad
