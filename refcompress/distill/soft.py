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

The KL term is :func:`refcompress.nn.losses.kl_div` (log-softmax based, stable for logits
of any magnitude); this module only adds T^2 and the mix.  It is evaluated in float64
whatever the logits' dtype: at large T the KL is a second-order quantity, ~|z_s - z_t|^2 /
T^2, formed from log-probabilities that agree to O(1/T), so in float32 the cancellation
error (~1e-7 relative to the log-probabilities) multiplied by T^2 swamps it already at
T ~ 1e3.  The gradient is returned in the logits' dtype.
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
    if t.shape[0] != s.shape[0]:
        raise ShapeError(
            f"teacher_logits: expected {s.shape[0]} rows (as student_logits), got shape {t.shape}")
    return s, t


def soft_target_loss(student_logits, teacher_logits, temperature: float = 4.0):
    """Hinton's soft-target loss ``T^2 * mean_i KL(softmax(t_i/T) || softmax(s_i/T))``.

    student_logits, teacher_logits : [N, C], same floating dtype.
    Returns ``(value, grad)``: value a Python float, grad = d value / d student_logits,
    [N, C] in the logits' dtype, equal to ``T * (p_s - p_t) / N``.
    """
    s, t = _check_logits(student_logits, teacher_logits)
    T = check_temperature(temperature)
    value, grad = kl_div(s.astype(np.float64, copy=False), t.astype(np.float64, copy=False),
                         temperature=T)
    T2 = T * T
    return value * T2, (grad * T2).astype(s.dtype, copy=False)


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
