"""SparseGPT: one-shot pruning with optimal-brain-surgeon reconstruction of the survivors.

Frantar & Alistarh, "SparseGPT: Massive Language Models Can Be Accurately Pruned in
One-Shot", ICML 2023 (Algorithm 1).

The layer-wise problem is  min_{M, W'} ||X W^T - X (M . W')^T||_F^2  with H = X^T X.  Columns
are visited left to right, as in GPTQ; at column j every pruned weight's error is pushed into
the columns not yet visited by the OBS update through the upper Cholesky factor U of the
damped inverse Hessian ((H + lambda I)^-1 = U^T U, lambda = damp * mean(diag H)):

    e = (W[:, j] - (M . W)[:, j]) / U_jj,        W[:, j:] -= e U_{j, j:}.

The mask is chosen adaptively, on the weights as they are when their block is reached
(already updated by the errors of earlier columns), by the OBS saliency

    w_c^2 / U_cc^2 = w_c^2 / [H_F^-1]_cc                                  (Alg. 1, line 6)

the output error of zeroing w_c alone (Hassibi & Stork 1992), with H_F^-1 the inverse
Hessian of the columns not yet visited (U_cc^2 = [H_F^-1]_cc; Algorithm 1 writes
"[H^-1]_cc^2" after overwriting H^-1 with its Cholesky factor U, line 1):

* unstructured: per block of ``block_size`` (B_s = 128) columns, over all rows of the block,
  the lowest-saliency weights are pruned.  The count per block is the difference of the
  rounded cumulative targets, k_b = round(p * out * i2) - round(p * out * i1), so the layer
  loses exactly round(p * out * in) weights (the reference code's threshold can overshoot
  on ties);
* N:M: per row and per group of M consecutive columns, chosen when the group is reached,
  the M - N lowest saliencies are pruned (exactly N kept).

Ties follow refcompress.prune's conventions: a stable sort, so among equal saliencies the
weight with the lower row-major index (within the block) is pruned first (as
:func:`refcompress.prune.mask_by_amount`); in an N:M group the lower position is kept (as
:func:`refcompress.prune.nm_mask`).  Lazy batch updates: as GPTQ, the columns after a block
receive its errors at once (``block_size`` is both the mask block and the update block).
Inputs with H_jj = 0 get W[:, j] = 0 (:mod:`refcompress._hessian`).

A fixed ``mask`` skips the selection and runs only the reconstruction: the same sweep, with
every weight outside the mask pruned when its column is reached.  Given the mask SparseGPT
itself chose, it repeats SparseGPT's arithmetic exactly.  The Wanda authors' weight-update
ablation (Sun et al. 2024, their code's ``ablate_wanda_seq``) runs this update under
Wanda's mask (:func:`refcompress.prune.wanda` with ``update=True``).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .. import _hessian
from .._validation import check_array, check_float, check_int
from ..errors import ArgumentError, ShapeError
from ..nn.functional import FLOAT_DTYPES
from .magnitude import n_pruned
from .nm import check_nm

__all__ = ["PruneResult", "sparsegpt", "check_sparsity", "check_nm_shape"]


class PruneResult(NamedTuple):
    """weight: the pruned (and, for SparseGPT, reconstructed) weight in the input dtype;
    mask: bool [out, in], True = kept (weight is 0 wherever mask is False)."""

    weight: np.ndarray
    mask: np.ndarray


def check_sparsity(sparsity) -> float:
    """A sparsity fraction in [0, 1) (1 would remove the whole layer)."""
    return check_float(sparsity, "sparsity", min_value=0.0, max_value=1.0, max_inclusive=False)


def check_nm_shape(n_in: int, n, m) -> tuple:
    n, m = check_nm(n, m)
    if n_in % m:
        raise ShapeError(f"weight: expected the input dimension (shape[1]) {n_in} divisible by m = {m}")
    return n, m


def _pattern(sparsity, n, m, n_in: int) -> tuple:
    """Validate "sparsity (unstructured) or n and m (N:M)" for a layer of ``n_in`` inputs;
    returns (sparsity or None, n, m)."""
    if (n is None) != (m is None):
        raise ArgumentError(f"n, m: give both for N:M sparsity or neither, got n={n}, m={m}")
    if n is not None and sparsity is not None:
        raise ArgumentError("sparsity, n, m: expected either sparsity (unstructured) or n and m (N:M), not both")
    if n is None and sparsity is None:
        raise ArgumentError("sparsity, n, m: expected sparsity (unstructured) or n and m (N:M)")
    if sparsity is not None:
        return check_sparsity(sparsity), None, None
    return (None,) + check_nm_shape(n_in, n, m)


def prune_lowest(scores, k: int) -> np.ndarray:
    """Mask (True = kept) pruning the ``k`` smallest of ``scores`` (stable: among equal
    scores the lower row-major index is pruned first)."""
    keep = np.ones(scores.size, bool)
    if k:
        keep[np.argsort(scores.reshape(-1), kind="stable")[:k]] = False
    return keep.reshape(scores.shape)


def keep_nm(scores, n: int, m: int) -> np.ndarray:
    """Mask keeping the ``n`` largest of every ``m`` consecutive scores of each row (stable:
    among equal scores the lower position is kept)."""
    rows, cols = scores.shape
    g = scores.reshape(rows, cols // m, m)
    order = np.argsort(-g, axis=-1, kind="stable")[..., :n]
    keep = np.zeros(g.shape, bool)
    np.put_along_axis(keep, order, True, axis=-1)
    return keep.reshape(rows, cols)


def sparsegpt(weight, x=None, *, sparsity=None, n=None, m=None, mask=None, hessian=None,
              block_size: int = 128, damp: float = 0.01) -> PruneResult:
    """Prune a Linear weight [out, in] with SparseGPT (Algorithm 1).

    x          : calibration inputs [N, in] (or [..., in]); or ``hessian`` = X^T X [in, in].
    sparsity   : unstructured: the fraction in [0, 1) of the layer's weights to prune; or
    n, m       : N:M semi-structured (keep n of every m consecutive inputs; in % m == 0); or
    mask       : bool [out, in], a fixed mask (True = kept): only the OBS reconstruction of
                 the kept weights runs (the mask is returned unchanged).
    block_size : B_s, the mask-selection and lazy-update block (128 in the paper).
    damp       : lambda = damp * mean(diag H) (1% in the paper).

    Returns :class:`PruneResult` (weight, mask), weight in ``weight``'s dtype.
    """
    w = check_array(weight, "weight", dtypes=FLOAT_DTYPES, ndim=2, finite=True)
    rows, cols = w.shape
    fixed = None
    if mask is not None:
        if sparsity is not None or n is not None or m is not None:
            raise ArgumentError("mask: expected either a fixed mask or a pattern (sparsity, or n and m), not both")
        fixed = check_array(mask, "mask", dtypes=(np.bool_,), shape=(rows, cols))
        p = None
    else:
        p, n, m = _pattern(sparsity, n, m, cols)
    bs = check_int(block_size, "block_size", min_value=1)
    h, dead = _hessian.dead_inputs(_hessian.layer_hessian(x, hessian, cols))
    U = _hessian.inverse_cholesky_upper(h, damp)
    d2 = np.diag(U) ** 2  # [H_F^-1]_cc: the inverse Hessian of the columns c.. at column c

    W = w.astype(np.float64)
    W[:, dead] = 0.0
    mask = np.ones((rows, cols), bool) if fixed is None else fixed.copy()
    for i1 in range(0, cols, bs):
        i2 = min(i1 + bs, cols)
        W1 = W[:, i1:i2].copy()
        E1 = np.zeros((rows, i2 - i1))
        if sparsity is not None:
            k = n_pruned(p, rows * i2) - n_pruned(p, rows * i1)
            mask[:, i1:i2] = prune_lowest(W1**2 / d2[i1:i2], k)
        for i in range(i2 - i1):
            j = i1 + i
            if fixed is None and sparsity is None and j % m == 0:
                # N:M: the group's mask from its current weights (in-block: W1 is current,
                # as the group never straddles blocks when m divides the block; else the
                # rest of the group still owes this block's lazy update)
                g = np.arange(j, j + m)
                inb = g < i2
                cur = np.empty((rows, m))
                cur[:, inb] = W1[:, g[inb] - i1]
                cur[:, ~inb] = W[:, g[~inb]] - E1[:, :i] @ U[i1:j, g[~inb]]
                mask[:, j:j + m] = keep_nm(cur**2 / d2[j:j + m], n, m)
            q = np.where(mask[:, j], W1[:, i], 0.0)
            err = (W1[:, i] - q) / U[j, j]
            W1[:, i:] -= np.outer(err, U[j, j:i2])
            W1[:, i] = q
            E1[:, i] = err
        W[:, i1:i2] = W1
        W[:, i2:] -= E1 @ U[i1:i2, i2:]
    W[~mask] = 0.0
    return PruneResult(W.astype(w.dtype), mask)
