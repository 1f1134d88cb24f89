"""Losses, each returning ``(value, grad)`` with grad = d value / d (first argument).

``value`` is a Python float (an ndarray of per-sample losses for ``reduction="none"``, in
which case ``grad`` is that of their sum: row i holds d loss_i / d input_i).  All work
from logits through :func:`~refcompress.nn.functional.log_softmax`, so they are stable
for logits of any magnitude.  ``grad`` has the first argument's shape and dtype.
"""

from __future__ import annotations

import numpy as np

from .._validation import check_array, check_choice, check_float
from ..errors import ArgumentError, DTypeError, ShapeError
from .functional import FLOAT_DTYPES, log_softmax

__all__ = ["cross_entropy", "mse", "kl_div"]

_REDUCTIONS = ("mean", "sum", "none")


def _reduce(per, grad, reduction):
    if reduction == "mean":
        return float(per.mean()), grad / grad.dtype.type(per.size)
    if reduction == "sum":
        return float(per.sum()), grad
    return per, grad


def cross_entropy(logits, target, reduction: str = "mean", label_smoothing: float = 0.0):
    """Softmax cross-entropy from logits [N, C] and integer class targets [N].

    With p = softmax(z) and the smoothed target q = (1 - eps) onehot(y) + eps / C
    (PyTorch's ``label_smoothing``):

        loss_i = -sum_k q_ik log p_ik,        d loss_i / d z_i = p_i - q_i

    averaged over the batch for ``reduction="mean"`` (the gradient then carries 1/N).
    """
    logits = check_array(logits, "logits", dtypes=FLOAT_DTYPES, ndim=2)
    N, C = logits.shape
    target = check_array(target, "target", ndim=1, shape=(N,))
    if target.dtype.kind not in "iu":
        raise DTypeError(f"target: expected an integer dtype (class indices), got {target.dtype.name}")
    if N == 0:
        raise ShapeError(f"logits: expected a non-empty batch, got shape {logits.shape}")
    if (target.min() < 0 or target.max() >= C):
        raise ArgumentError(
            f"target: expected class indices in [0, {C - 1}], got values in "
            f"[{target.min()}, {target.max()}]")
    check_choice(reduction, "reduction", _REDUCTIONS)
    eps = check_float(label_smoothing, "label_smoothing", min_value=0.0, max_value=1.0)
    logp = log_softmax(logits, axis=1)
    q = np.full_like(logits, eps / C)
    q[np.arange(N), target] += logits.dtype.type(1.0 - eps)
    # q = 0 contributes 0 even where log p = -inf (a -inf logit): 0 * -inf would be NaN,
    # PyTorch's value is finite.  Every other term is q * log p as before.
    per = -np.multiply(q, logp, out=np.zeros_like(logp), where=q != 0).sum(axis=1)
    return _reduce(per, np.exp(logp) - q, reduction)


def mse(pred, target, reduction: str = "mean"):
    """Mean squared error over all elements: (1/n) sum (pred - target)^2;
    d/d pred = 2 (pred - target) / n.  ``target`` has ``pred``'s shape and dtype."""
    pred = check_array(pred, "pred", dtypes=FLOAT_DTYPES)
    target = check_array(target, "target", dtypes=(pred.dtype,), shape=pred.shape)
    check_choice(reduction, "reduction", _REDUCTIONS)
    d = pred - target
    return _reduce(d * d, 2 * d, reduction)


def kl_div(student_logits, teacher_logits, temperature: float = 1.0):
    """Soft-target distillation loss (Hinton et al. 2015), without the T^2 factor:

        p_t = softmax(t / T),  p_s = softmax(s / T)
        value = (1/N) sum_i KL(p_t,i || p_s,i) = (1/N) sum_i sum_k p_t (log p_t - log p_s)
        d value / d s = (p_s - p_t) / (T N)

    Both logits [N, C] of one dtype.  Teacher probabilities that underflow to 0 contribute
    0 (log p_t is computed by log_softmax, so it is finite).
    """
    s = check_array(student_logits, "student_logits", dtypes=FLOAT_DTYPES, ndim=2)
    t = check_array(teacher_logits, "teacher_logits", dtypes=(s.dtype,), shape=s.shape)
    T = check_float(temperature, "temperature", min_value=0.0, min_inclusive=False)
    if s.shape[0] == 0:
        raise ShapeError(f"student_logits: expected a non-empty batch, got shape {s.shape}")
    Tt = s.dtype.type(T)
    log_ps = log_softmax(s / Tt, axis=1)
    log_pt = log_softmax(t / Tt, axis=1)
    pt = np.exp(log_pt)
    N = s.shape[0]
    value = float((pt * (log_pt - log_ps)).sum() / N)
    return value, (np.exp(log_ps) - pt) / (Tt * s.dtype.type(N))
