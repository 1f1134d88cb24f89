"""SmoothQuant: move activation outliers into the weights before W8A8 quantization.

Xiao, Lin, Seznec, Wu, Demouth & Han, "SmoothQuant: Accurate and Efficient Post-Training
Quantization for Large Language Models", ICML 2023.

A few input channels of a transformer's activations are 10-100x larger than the rest, so a
per-tensor activation scale wastes most codes on them.  A per-input-channel factor s > 0
leaves the product unchanged,

    Y = X W^T = (X diag(s)^-1) (W diag(s))^T,                                   (their eq. 3)

and is chosen to balance the two ranges (their eq. 4), with migration strength alpha:

    s_j = max_t |X_tj|^alpha / max_i |W_ij|^(1 - alpha).

When several weights share one input (the query, key and value projections, or an MLP's
gate and up projections) one s serves all of them: max_i |W_ij| is taken over the rows of
all of them.  X diag(s)^-1 costs nothing at run time when folded into the op before
(a LayerNorm: gamma / s, beta / s -- :func:`fold_into_layernorm`), and W diag(s) is folded
into every consuming weight (:func:`fold_into_weight`).  The activation statistic
max_t |X_tj| is collected over calibration batches by :class:`AbsMaxAccumulator`.

Zeros: a channel with max|X_j| = 0 or max|W_:j| = 0 gets its maxima clamped to 1e-5 before
the division (the reference code's clamp), so s is always finite and positive.
"""

from __future__ import annotations

import numpy as np

from .._validation import check_array, check_float, check_int
from ..errors import ArgumentError, ShapeError

__all__ = ["AbsMaxAccumulator", "smoothquant_scales", "fold_into_layernorm", "fold_into_weight",
           "smooth_activations"]

FLOATS = (np.float32, np.float64)
_FLOOR = 1e-5


class AbsMaxAccumulator:
    """Running max_t |X_tj| per input channel over batches x [..., n_features] (float64)."""

    def __init__(self, n_features: int):
        self.n_features = check_int(n_features, "n_features", min_value=1)
        self._m = np.zeros(self.n_features, np.float64)
        self.n = 0

    def add(self, x) -> "AbsMaxAccumulator":
        x = check_array(x, "x", dtypes=FLOATS, min_ndim=1, finite=True)
        if x.shape[-1] != self.n_features:
            raise ShapeError(f"x: expected last dimension {self.n_features}, got shape {x.shape}")
        x2 = x.reshape(-1, self.n_features)
        if x2.shape[0]:
            self._m = np.maximum(self._m, np.abs(x2).max(axis=0))
        self.n += x2.shape[0]
        return self

    @property
    def absmax(self) -> np.ndarray:
        return self._m.copy()


def smoothquant_scales(act_absmax, weights, alpha: float = 0.5) -> np.ndarray:
    """s_j = max|X_j|^alpha / max|W_:j|^(1 - alpha)  (eq. 4), float32 [in].

    act_absmax : max_t |X_tj| per input channel [in] (e.g. ``AbsMaxAccumulator.absmax``).
    weights    : one weight [out, in] or a list of weights sharing the input (Q, K, V);
                 max_i |W_ij| is over all their rows.
    alpha      : migration strength in [0, 1] (0.5 in the paper; larger moves more of the
                 activations' range into the weights).
    """
    a = check_array(act_absmax, "act_absmax", dtypes=FLOATS, ndim=1, finite=True)
    if np.any(a < 0):
        raise ArgumentError("act_absmax: expected nonnegative maxima max|X_j|")
    alpha = check_float(alpha, "alpha", min_value=0.0, max_value=1.0)
    ws = [weights] if isinstance(weights, np.ndarray) else list(weights)
    if not ws:
        raise ShapeError("weights: expected at least one weight [out, in]")
    wmax = np.zeros(a.shape[0], np.float64)
    for k, w in enumerate(ws):
        w = check_array(w, f"weights[{k}]", dtypes=FLOATS, ndim=2, finite=True)
        if w.shape[1] != a.shape[0]:
            raise ShapeError(f"weights[{k}]: expected {a.shape[0]} input columns (len(act_absmax)), "
                             f"got shape {w.shape}")
        if w.shape[0]:
            wmax = np.maximum(wmax, np.abs(w.astype(np.float64)).max(axis=0))
    s = np.maximum(a, _FLOOR) ** alpha / np.maximum(wmax, _FLOOR) ** (1.0 - alpha)
    return s.astype(np.float32)


def _check_scales(s, n, name="s"):
    s = check_array(s, name, dtypes=FLOATS, ndim=1, finite=True)
    if s.shape[0] != n:
        raise ShapeError(f"{name}: expected length {n}, got {s.shape}")
    if np.any(s <= 0):
        raise ArgumentError(f"{name}: expected positive smoothing factors")
    return s


def fold_into_weight(weight, s) -> np.ndarray:
    """W diag(s): column j of ``weight`` [out, in] times s_j (same dtype as weight)."""
    w = check_array(weight, "weight", dtypes=FLOATS, ndim=2, finite=True)
    s = _check_scales(s, w.shape[1])
    return (w * s.astype(w.dtype)).astype(w.dtype)


def smooth_activations(x, s) -> np.ndarray:
    """X diag(s)^-1: x [..., in] divided channel-wise by s (what a folded LayerNorm emits)."""
    x = check_array(x, "x", dtypes=FLOATS, min_ndim=1, finite=True)
    s = _check_scales(s, x.shape[-1])
    return (x / s.astype(x.dtype)).astype(x.dtype)


def fold_into_layernorm(gamma, beta, s) -> tuple:
    """(gamma / s, beta / s): LayerNorm(x) diag(s)^-1 as a LayerNorm (its affine part is
    per channel, so dividing it divides the output)."""
    g = check_array(gamma, "gamma", dtypes=FLOATS, ndim=1, finite=True)
    b = check_array(beta, "beta", dtypes=FLOATS, ndim=1, shape=g.shape, finite=True)
    s = _check_scales(s, g.shape[0])
    return (g / s.astype(g.dtype)).astype(g.dtype), (b / s.astype(b.dtype)).astype(b.dtype)
