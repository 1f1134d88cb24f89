"""Truncated SVD of a dense layer (Denton et al. 2014), and the Eckart-Young error.

A Linear weight W [m, n] (m = out_features, n = in_features) is replaced by its best rank-r
approximation in the Frobenius (and spectral) norm (Eckart & Young 1936):

    W = U S V^T  (thin SVD, s_1 >= s_2 >= ...),     W_r = U_r S_r V_r^T,
    ||W - W_r||_F = sqrt(sum_{i > r} s_i^2).

Storing U_r, S_r and V_r separately costs (m + n) r + r parameters (the seed's count of
(m + n) r + r^2 keeps S_r as a dense r x r matrix, as a third layer would).  Folding S_r into
the two outer factors,

    A = U_r S_r^(1/2)  [m, r],     B = S_r^(1/2) V_r^T  [r, n],     W_r = A B,

leaves exactly two layers and (m + n) r parameters.  The split of S_r between A and B does
not change W_r; the balanced square-root split keeps both factors on the same scale, which
helps fine-tuning with one learning rate (and is what makes int8 quantization of both
factors use similar ranges).

y = x W^T + b becomes y = (x B^T) A^T + b: a Linear(n -> r, no bias) then a Linear(r -> m).
Multiply-adds per input row drop from m n to (m + n) r, a saving whenever r < m n / (m + n).
"""

from __future__ import annotations

import numpy as np

from .._validation import check_array, check_choice, check_int
from ..errors import ArgumentError

__all__ = ["truncated_svd", "svd_residual", "low_rank_params", "max_useful_rank", "check_rank"]

FLOATS = (np.float32, np.float64)


def check_rank(rank, m: int, n: int, name: str = "rank") -> int:
    """Return ``rank`` if 1 <= rank <= min(m, n), else raise naming ``name``.

    A rank above min(m, n) is refused rather than clipped: it cannot add information (the
    SVD has only min(m, n) singular values) and clipping silently would hide a caller's
    mistake in a rank schedule.
    """
    return check_int(rank, name, min_value=1, max_value=min(m, n))


def low_rank_params(m: int, n: int, rank: int) -> int:
    """Parameters of the folded factorisation: (m + n) r (biases not counted)."""
    return (int(m) + int(n)) * int(rank)


def max_useful_rank(m: int, n: int) -> int:
    """Largest r whose factorisation has fewer parameters (and MACs) than the dense m x n."""
    return max((m * n - 1) // (m + n), 0)


def truncated_svd(weight, rank, *, fold: str = "balanced"):
    """The best rank-``rank`` factors of ``weight`` [m, n]: returns (A [m, r], B [r, n]).

    A @ B = U_r S_r V_r^T (Eckart-Young optimal).  ``fold`` decides where S_r goes:
    ``"balanced"`` (A = U_r S_r^1/2, B = S_r^1/2 V_r^T), ``"left"`` (A = U_r S_r, B = V_r^T)
    or ``"right"`` (A = U_r, B = S_r V_r^T).  The SVD is taken in float64 and the factors
    are returned in ``weight``'s dtype (float32 or float64).  Singular-vector signs are
    made deterministic (the largest-magnitude entry of each column of U_r is positive).

    Raises ArgumentError for rank <= 0 or rank > min(m, n).
    """
    w = check_array(weight, "weight", dtypes=FLOATS, ndim=2, finite=True)
    m, n = w.shape
    r = check_rank(rank, m, n)
    check_choice(fold, "fold", ("balanced", "left", "right"))
    u, s, vt = np.linalg.svd(w.astype(np.float64), full_matrices=False)
    u, s, vt = u[:, :r], s[:r], vt[:r]
    flip = np.sign(u[np.argmax(np.abs(u), axis=0), np.arange(r)])
    flip[flip == 0] = 1.0
    u, vt = u * flip, vt * flip[:, None]
    if fold == "balanced":
        root = np.sqrt(s)
        a, b = u * root, root[:, None] * vt
    elif fold == "left":
        a, b = u * s, vt
    else:
        a, b = u, s[:, None] * vt
    return a.astype(w.dtype), b.astype(w.dtype)


def svd_residual(singular_values, rank) -> float:
    """Eckart-Young: ||W - W_r||_F = sqrt(sum_{i > r} s_i^2) from W's singular values."""
    s = check_array(singular_values, "singular_values", ndim=1, finite=True)
    if s.dtype.kind != "f":
        raise ArgumentError(f"singular_values: expected floats, got dtype {s.dtype.name}")
    r = check_int(rank, "rank", min_value=0, max_value=s.size)
    return float(np.sqrt(np.sum(np.square(s[r:].astype(np.float64)))))
