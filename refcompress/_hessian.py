"""The layer Hessian of data-aware compression, in one place (used by quant, prune, lowrank).

For a Linear layer y = x W^T with calibration inputs X [N, n] (rows = tokens), the output
error of a perturbed weight W + dW is

    ||X dW^T||_F^2 = sum_i dW_i H dW_i^T,        H = X^T X   [n, n],

so H is the Hessian of the layer-wise reconstruction loss (up to the factor 2 and the
1/N that GPTQ and SparseGPT write, which cancel in every algorithm here because damping
is relative).  This module owns the shared machinery:

* :class:`HessianAccumulator` and :func:`gram`: H = sum over batches of x^T x in float64;
* :func:`dead_inputs`: inputs with H_jj = 0 never see a nonzero value; their weights do
  not change the output on the calibration data, so the algorithms zero them and set
  H_jj = 1 to keep H invertible (Frantar et al. 2023, GPTQ reference code);
* :func:`damped`: H + lambda I with lambda = damp * mean(diag H) (GPTQ sec. 3, "Cholesky
  reformulation": 1% of the average diagonal);
* :func:`inverse_cholesky_upper`: the upper Cholesky factor U of (H + lambda I)^-1 =
  U^T U, whose rows give every OBS update GPTQ and SparseGPT need (GPTQ sec. 3, step 3).

Not a technique package: ``refcompress.quant``, ``refcompress.prune`` and
``refcompress.lowrank`` import it, it imports none of them.
"""

from __future__ import annotations

import numpy as np

from ._validation import check_array, check_float, check_int
from .errors import ArgumentError, ShapeError

__all__ = [
    "HessianAccumulator",
    "gram",
    "check_hessian",
    "layer_hessian",
    "layer_hessian_diag",
    "dead_inputs",
    "damped",
    "inverse_cholesky_upper",
]

FLOATS = (np.float32, np.float64)


def gram(x, name: str = "x", n_features: int | None = None) -> np.ndarray:
    """H = X^T X in float64 for inputs ``x`` [N, n] (or [..., n], flattened to rows)."""
    x = check_array(x, name, dtypes=FLOATS, min_ndim=1, finite=True)
    if n_features is not None and x.shape[-1] != n_features:
        raise ShapeError(f"{name}: expected last dimension {n_features} (the layer's in_features), "
                         f"got shape {x.shape}")
    x2 = x.reshape(-1, x.shape[-1]).astype(np.float64)
    return x2.T @ x2


class HessianAccumulator:
    """H = sum_batches x^T x over calibration batches x [..., n_features] (float64).

    ``add(x)`` folds one batch in; ``matrix`` is the sum so far (a copy), ``n`` the number
    of rows (tokens) seen.  The mean H / n differs only by a constant, which every
    algorithm here is invariant to (damping is relative to mean(diag H)).
    """

    def __init__(self, n_features: int):
        self.n_features = check_int(n_features, "n_features", min_value=1)
        self._h = np.zeros((self.n_features, self.n_features), np.float64)
        self.n = 0

    def add(self, x) -> "HessianAccumulator":
        x = check_array(x, "x", dtypes=FLOATS, min_ndim=1, finite=True)
        self._h += gram(x, "x", self.n_features)
        self.n += int(np.prod(x.shape[:-1], dtype=np.int64))
        return self

    @property
    def matrix(self) -> np.ndarray:
        return self._h.copy()


def check_hessian(hessian, n: int, name: str = "hessian") -> np.ndarray:
    """A finite, symmetric [n, n] matrix as float64 (refuses NaN / Inf and other shapes)."""
    h = check_array(hessian, name, dtypes=FLOATS, ndim=2, shape=(n, n), finite=True).astype(np.float64)
    scale = max(float(np.max(np.abs(h))) if h.size else 0.0, 1e-300)
    if not np.allclose(h, h.T, rtol=0, atol=1e-6 * scale):
        raise ArgumentError(f"{name}: expected a symmetric matrix (X^T X), got an asymmetric one")
    if np.any(np.diag(h) < 0):
        raise ArgumentError(f"{name}: expected a nonnegative diagonal (X^T X), got a negative entry")
    return h


def layer_hessian(x, hessian, n: int) -> np.ndarray:
    """H from exactly one of calibration inputs ``x`` [..., n] or a precomputed ``hessian``."""
    if (x is None) == (hessian is None):
        raise ArgumentError("x, hessian: expected exactly one of calibration inputs x or their Hessian X^T X")
    if x is not None:
        return gram(x, "x", n)
    return check_hessian(hessian, n)


def layer_hessian_diag(x, hessian, n: int) -> np.ndarray:
    """diag H = (||X_j||_2^2)_j from exactly one of ``x`` [..., n] or ``hessian`` [n, n]
    (from x without forming the whole matrix)."""
    if (x is None) == (hessian is None):
        raise ArgumentError("x, hessian: expected exactly one of calibration inputs x or their Hessian X^T X")
    if hessian is not None:
        return np.diag(check_hessian(hessian, n)).copy()
    x = check_array(x, "x", dtypes=FLOATS, min_ndim=1, finite=True)
    if x.shape[-1] != n:
        raise ShapeError(f"x: expected last dimension {n} (the layer's in_features), got shape {x.shape}")
    x2 = x.reshape(-1, n).astype(np.float64)
    return np.einsum("ti,ti->i", x2, x2)


def dead_inputs(h) -> tuple:
    """(H', dead): ``dead`` marks inputs with H_jj = 0 (always zero on the calibration data);
    H' is H with H'_jj = 1 there, so it stays invertible.  The caller zeroes W[:, dead].
    An H that is entirely zero (no calibration data) is refused rather than zeroing W."""
    dead = np.diag(h) == 0
    if dead.size and np.all(dead):
        raise ArgumentError("hessian: every input is zero on the calibration data (H = 0); "
                            "nothing to fit (was calibration run?)")
    if np.any(dead):
        h = h.copy()
        h[dead, dead] = 1.0
    return h, dead


def damped(h, damp: float) -> tuple:
    """(H + lambda I, lambda) with lambda = damp * mean(diag H), damp >= 0."""
    damp = check_float(damp, "damp", min_value=0.0)
    lam = damp * float(np.mean(np.diag(h))) if h.size else 0.0
    return h + lam * np.eye(h.shape[0]), lam


def inverse_cholesky_upper(h, damp: float = 0.01) -> np.ndarray:
    """Upper-triangular U with (H + lambda I)^-1 = U^T U  (lambda = damp * mean(diag H)).

    Row j of U, divided by U_jj, is the OBS update of the not-yet-processed weights j..n-1
    when weight j is fixed, after the weights 0..j-1 have been eliminated (GPTQ sec. 3);
    U_jj^2 = [H_F^-1]_jj of that reduced problem.  Raises ArgumentError when the damped H is
    not positive definite (increase ``damp``).
    """
    hd, lam = damped(h, damp)
    try:
        low = np.linalg.cholesky(hd)  # H = L L^T
        low_inv = np.linalg.inv(low)
        hinv = low_inv.T @ low_inv  # H^-1 = L^-T L^-1
        hinv = 0.5 * (hinv + hinv.T)
        return np.linalg.cholesky(hinv).T  # H^-1 = U^T U, U = chol(H^-1)^T
    except np.linalg.LinAlgError:
        raise ArgumentError(
            f"damp: the damped Hessian H + {lam:.3g} I is not positive definite; "
            f"increase damp (got {damp})") from None
