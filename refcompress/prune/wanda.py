"""Wanda: pruning by weights and activations, without any weight update.

Sun, Liu, Bair & Kolter, "A Simple and Effective Pruning Approach for Large Language
Models", ICLR 2024.

The score of weight W_ij is its magnitude times the norm of the input feature it multiplies
over the calibration tokens X [N, in] (their eq. 1):

    S_ij = |W_ij| * ||X_j||_2 ,        ||X_j||_2 = sqrt(sum_t X_tj^2) = sqrt(H_jj),  H = X^T X,

and scores are compared *per output row* (sec. 3, "comparison group"): every row i loses
its own round(p * in) lowest-scoring weights; for N:M, every group of M consecutive inputs of
a row keeps its N highest scores.  The kept weights are not changed, unless ``update=True``:
then the authors' weight-update ablation runs (their code's ``ablate_wanda_seq``): the mask
is chosen once by the scores above, and SparseGPT's OBS sweep reconstructs the kept weights
under it (:func:`refcompress.prune.sparsegpt` with ``mask=``), which needs the full
H = X^T X instead of its diagonal.  That is no longer "pruning without weight update", the
point of the method; it is here because at 2:4 Wanda's mask alone loses much more than
SparseGPT (docs/transformers.md).

Ties follow refcompress.prune's conventions: a stable sort, so within a row the lower
input index is pruned first among equal scores (as :func:`refcompress.prune.mask_by_amount`),
and in an N:M group the lower position is kept (as :func:`refcompress.prune.nm_mask`).
"""

from __future__ import annotations

import numpy as np

from .. import _hessian
from .._validation import check_array
from ..errors import ArgumentError, ShapeError
from ..nn.functional import FLOAT_DTYPES
from .magnitude import n_pruned
from .sparsegpt import PruneResult, _pattern, keep_nm, prune_lowest, sparsegpt

__all__ = ["wanda_scores", "wanda"]


def wanda_scores(weight, input_norm) -> np.ndarray:
    """S_ij = |W_ij| * ||X_j||_2 for weight [out, in] and input_norm [in] (float64 scores)."""
    w = check_array(weight, "weight", dtypes=FLOAT_DTYPES, ndim=2, finite=True)
    a = check_array(input_norm, "input_norm", dtypes=FLOAT_DTYPES, ndim=1, finite=True)
    if a.shape[0] != w.shape[1]:
        raise ShapeError(f"input_norm: expected length {w.shape[1]} (the layer's in_features), got {a.shape}")
    if np.any(a < 0):
        raise ArgumentError("input_norm: expected nonnegative norms ||X_j||_2")
    return np.abs(w.astype(np.float64)) * a.astype(np.float64)


def wanda(weight, x=None, *, sparsity=None, n=None, m=None, hessian=None, update: bool = False,
          damp: float = 0.01) -> PruneResult:
    """Prune a Linear weight [out, in] by Wanda scores |W_ij| ||X_j||_2, per output row.

    x        : calibration inputs [N, in] (or [..., in]); or ``hessian`` = X^T X [in, in]
               (without ``update`` only its diagonal, sum_t X_tj^2, is used).
    sparsity : unstructured, the fraction in [0, 1) pruned from every row; or
    n, m     : N:M (keep n of every m consecutive inputs of each row; in % m == 0).
    update   : reconstruct the kept weights by SparseGPT's OBS update under this mask;
               ``damp`` is then its lambda / mean(diag H).

    Returns :class:`PruneResult` (weight, mask), weight in ``weight``'s dtype; without
    ``update`` no weight is changed (weight = W . mask).
    """
    w = check_array(weight, "weight", dtypes=FLOAT_DTYPES, ndim=2, finite=True)
    rows, cols = w.shape
    p, n, m = _pattern(sparsity, n, m, cols)
    scores = wanda_scores(w, np.sqrt(_hessian.layer_hessian_diag(x, hessian, cols)))
    if sparsity is not None:
        k = n_pruned(p, cols)
        mask = np.stack([prune_lowest(s, k) for s in scores]) if rows else np.ones(w.shape, bool)
    else:
        mask = keep_nm(scores, n, m)
    if update:
        return sparsegpt(w, x, mask=mask, hessian=hessian, damp=damp)
    return PruneResult(np.where(mask, w, 0).astype(w.dtype), mask)
