"""Feature / hint distillation (FitNets: Romero et al. 2015, "FitNets: Hints for Thin Deep
Nets", ICLR, arXiv:1412.6550).

A teacher "hint" layer's output u_t guides a student "guided" layer's output v_s through a
trainable regressor r that maps the student's width onto the teacher's:

    HT = 1/2 * (1/N) sum_n || u_t,n - r(v_s,n) ||_2^2
    dHT / d r(v_s) = (r(v_s) - u_t) / N

(the paper's 1/2 ||u - r(v)||^2, averaged over the batch).  r is a
:class:`refcompress.nn.Linear` for vectors [N, D] or a 1x1 :class:`refcompress.nn.Conv2d`
for feature maps [N, C, H, W] (the paper's convolutional regressor, with a 1x1 kernel, so
spatial sizes must already agree); with equal widths r may be the identity.  The gradient
reaches the student through r's backward, which also accumulates r's own parameter grads.
"""

from __future__ import annotations

import numpy as np

from .._validation import check_array, check_float
from ..errors import ArgumentError, DTypeError, ShapeError
from ..nn import Conv2d, Linear, Module
from ..nn.functional import FLOAT_DTYPES

__all__ = ["hint_loss", "make_regressor", "Hint"]


def hint_loss(student_regressed, teacher_features):
    """``1/2 * mean_n ||u_t,n - r_n||^2`` and its gradient ``(r - u_t) / N`` w.r.t. r.

    student_regressed : r(v_s), any shape [N, ...], floating.
    teacher_features  : u_t, the same shape and dtype.
    Returns ``(value, grad)``; grad has student_regressed's shape and dtype.
    """
    r = check_array(student_regressed, "student_regressed", dtypes=FLOAT_DTYPES, min_ndim=1)
    u = check_array(teacher_features, "teacher_features", dtypes=(r.dtype,), min_ndim=1)
    if u.shape != r.shape:
        raise ShapeError(
            f"teacher_features: expected shape {r.shape} (as the regressed student features), "
            f"got {u.shape}")
    if r.shape[0] == 0:
        raise ShapeError(f"student_regressed: expected a non-empty batch, got shape {r.shape}")
    N = r.shape[0]
    d = r - u
    value = 0.5 * float(np.sum(d.astype(np.float64) ** 2)) / N
    return value, d / r.dtype.type(N)


def _width_and_spatial(x, name):
    x = check_array(x, name, dtypes=FLOAT_DTYPES, ndim=(2, 4))
    return x, x.shape[1], x.shape[2:]


def make_regressor(student_features, teacher_features, *, force: bool = False, rng=None):
    """The regressor r for a (guided, hint) pair, built from example outputs of both.

    [N, D_s] and [N, D_t]           -> Linear(D_s, D_t)
    [N, C_s, H, W] and [N, C_t, H, W] -> Conv2d(C_s, C_t, kernel_size=1)
    Returns None (identity) when the widths agree, unless ``force``.  The regressor has the
    student features' dtype.  Mismatched ranks or spatial sizes raise ShapeError.
    """
    s, ws, hs = _width_and_spatial(student_features, "student_features")
    t, wt, ht = _width_and_spatial(teacher_features, "teacher_features")
    if s.ndim != t.ndim:
        raise ShapeError(
            f"teacher_features: expected a {s.ndim}-D array like student_features, got shape "
            f"{t.shape}")
    if hs != ht:
        raise ShapeError(
            f"student_features: spatial size {tuple(hs)} differs from teacher_features "
            f"{tuple(ht)}; a 1x1 regressor cannot resize, tap layers of equal resolution")
    if ws == wt and not force:
        return None
    reg = Linear(ws, wt, rng=rng) if s.ndim == 2 else Conv2d(ws, wt, 1, rng=rng)
    return reg.to(s.dtype)


class Hint:
    """One FitNets (guided, hint) pair: its regressor and its loss.

    ``Hint(regressor)`` with an nn Module (or None for the identity); usually built by
    :meth:`from_features`.  :meth:`loss` runs r forward in training mode, computes
    :func:`hint_loss` and runs r backward, returning the gradient w.r.t. the *student*
    features (and leaving dHT/dθ_r in r's parameters' ``.grad``).
    """

    def __init__(self, regressor: Module | None = None):
        if regressor is not None and not isinstance(regressor, Module):
            raise DTypeError(f"regressor: expected an nn Module or None, got {type(regressor).__name__}")
        self.regressor = regressor

    @classmethod
    def from_features(cls, student_features, teacher_features, *, force: bool = False, rng=None):
        return cls(make_regressor(student_features, teacher_features, force=force, rng=rng))

    def parameters(self):
        return [] if self.regressor is None else list(self.regressor.parameters())

    def loss(self, student_features, teacher_features, weight: float = 1.0):
        """``(value, d(weight * value) / d student_features)`` for HT = 1/2 mean ||u_t - r(v_s)||^2.

        ``weight`` (gamma in a mixed objective) scales the gradient that flows back, both to
        the student and into the regressor's parameter grads; ``value`` is unweighted.
        """
        v = check_array(student_features, "student_features", dtypes=FLOAT_DTYPES, min_ndim=2)
        weight = check_float(weight, "weight", min_value=0.0)
        if self.regressor is None:
            value, g = hint_loss(v, teacher_features)
            return value, g * g.dtype.type(weight)
        self.regressor.train()
        try:
            r = self.regressor(v)
        except ShapeError as e:
            raise ShapeError(f"student_features: does not fit the hint regressor ({e})") from None
        except DTypeError as e:
            raise DTypeError(f"student_features: does not fit the hint regressor ({e})") from None
        value, g = hint_loss(r, teacher_features)
        gv = self.regressor.backward(g * g.dtype.type(weight))
        if gv.shape != v.shape:
            raise ArgumentError(f"regressor: its backward returned shape {gv.shape}, expected {v.shape}")
        return value, gv
