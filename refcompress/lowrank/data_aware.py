"""Data-aware low rank: minimise the layer's output error on calibration inputs.

Truncated SVD minimises the weight error ||W - W'||_F.  What the network sees is the output
error on real inputs X [N, n] (rows = calibration activations entering the layer):

    min_{rank W' <= r}  ||X W^T - X W'^T||_F^2 = tr((W - W') C (W - W')^T),   C = X^T X.

With the Cholesky factor C + lambda I = L L^T (damping lambda = damping * mean(diag C)
makes C positive definite when X is rank-deficient, e.g. ReLU outputs that are always 0)
this is ||(W - W') L||_F^2, so the optimum is the truncated SVD of the *whitened* weight:

    W L = U S V^T,     W' = (U_r S_r V_r^T) L^{-1},
    A = U_r S_r^(1/2)  [m, r],     B = S_r^(1/2) V_r^T L^{-1}  [r, n].

(The idea is SVD-LLM's "truncation-aware data whitening", Wang et al. 2024, and the
whitened reconstruction of Zhang et al. 2016 "Accelerating very deep convolutional
networks"; with lambda -> 0 it is the exact minimiser of the output error.)
"""

from __future__ import annotations

import numpy as np

from .. import _hessian
from .._validation import check_array, check_float
from ..errors import ArgumentError, ShapeError
from .svd import FLOATS, check_rank

__all__ = ["whitened_svd", "output_error", "calibration_gram"]


def calibration_gram(x) -> np.ndarray:
    """C = X^T X in float64 for activations ``x`` [N, n] (or [..., n], flattened).

    The same matrix GPTQ and SparseGPT call H; one definition, :func:`refcompress._hessian.gram`
    (accumulate it over batches with :class:`refcompress._hessian.HessianAccumulator`).
    """
    return _hessian.gram(x, "x")


def whitened_svd(weight, x=None, rank=None, *, gram=None, damping: float = 1e-4):
    """Rank-``rank`` factors (A [m, r], B [r, n]) minimising ||x W^T - x (A B)^T||_F.

    weight : [m, n] float32/float64.  x : calibration inputs [N, n] (or pass ``gram`` =
    X^T X [n, n] accumulated over batches instead).  damping : lambda / mean(diag C), >= 0.
    Returns factors in ``weight``'s dtype.  Raises ArgumentError for rank outside
    [1, min(m, n)] or when C + lambda I is not positive definite (a rank-deficient float32
    gram with ``damping`` 0: increase it), ShapeError when x's width is not n.
    """
    w = check_array(weight, "weight", dtypes=FLOATS, ndim=2, finite=True)
    m, n = w.shape
    r = check_rank(rank, m, n)
    lam = check_float(damping, "damping", min_value=0.0)
    if (x is None) == (gram is None):
        raise ShapeError("x, gram: expected exactly one of calibration inputs x or their gram X^T X")
    if gram is None:
        x = check_array(x, "x", dtypes=FLOATS, min_ndim=1, finite=True)
        if x.shape[-1] != n:
            raise ShapeError(f"x: expected last dimension {n} (the layer's in_features), got shape {x.shape}")
        c = calibration_gram(x)
    else:
        c = check_array(gram, "gram", ndim=2, shape=(n, n), finite=True).astype(np.float64)
    mean_diag = float(np.mean(np.diag(c)))
    c, lam_abs = _hessian.damped(c, lam)  # C + lambda I, lambda = damping * mean(diag C)
    # Even with damping 0 a floor keeps the Cholesky factor defined for a zero gram.
    c = c + 1e-12 * max(mean_diag, 1.0) * np.eye(n)
    try:
        chol = np.linalg.cholesky(c)  # C = L L^T, L lower-triangular
    except np.linalg.LinAlgError:
        # A rank-deficient gram summed in float32 has eigenvalues of -1e-7 mean(diag C),
        # far below the 1e-12 floor: only damping makes it positive definite.
        name = "x" if gram is None else "gram"
        raise ArgumentError(
            f"{name}, damping: the damped gram C + {lam_abs:.3g} I is not positive definite ({name} is "
            f"rank-deficient beyond its rounding); expected a larger damping (e.g. the default 1e-4), "
            f"got damping={damping}") from None
    u, s, vt = np.linalg.svd(w.astype(np.float64) @ chol, full_matrices=False)
    root = np.sqrt(s[:r])
    a = u[:, :r] * root
    # B = S^1/2 V^T L^{-1}  <=>  L^T B^T = V S^1/2
    b = np.linalg.solve(chol.T, vt[:r].T * root).T
    return a.astype(w.dtype), b.astype(w.dtype)


def output_error(weight, factors, x) -> float:
    """Relative output error ||x W^T - x (A B)^T||_F / ||x W^T||_F of factors (A, B)."""
    w = check_array(weight, "weight", dtypes=FLOATS, ndim=2)
    a, b = factors
    x2 = np.asarray(x, np.float64).reshape(-1, w.shape[1])
    ref = x2 @ w.astype(np.float64).T
    approx = (x2 @ np.asarray(b, np.float64).T) @ np.asarray(a, np.float64).T
    den = np.linalg.norm(ref)
    return float(np.linalg.norm(ref - approx) / (den if den > 0 else 1.0))
