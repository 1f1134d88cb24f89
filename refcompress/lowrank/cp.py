"""CP (CANDECOMP/PARAFAC) decomposition by alternating least squares, and its use for
convolutions (Lebedev et al. 2015).

A tensor X [I_1, ..., I_N] is approximated by R rank-one terms,

    X[i_1, ..., i_N] ~ sum_{r < R} A_1[i_1, r] A_2[i_2, r] ... A_N[i_N, r]  =  [[A_1, ..., A_N]].

ALS (Carroll & Chang 1970; Harshman 1970; Kolda & Bader 2009, sec. 3.4) updates one factor
at a time by the exact least-squares solution with the others fixed:

    A_n <- X_(n) (odot_{k != n} A_k)  (hadamard_{k != n} A_k^T A_k)^{-1}

(X_(n) the mode-n unfolding, odot the Khatri-Rao product in the unfolding's order).  Each
update minimises the loss over A_n, so the loss never increases.  Two stabilisers keep that
property:

* proximal damping (Levenberg-Marquardt style; Navasca, De Lathauwer & Kindermann 2008):
  minimise ||X - [[..]]||^2 + lambda ||A_n - A_n^old||^2, i.e.
  A_n <- (X_(n) KR + lambda A_n^old)(G + lambda I)^{-1}.  A_n^old is feasible, so the data
  loss cannot rise;  lambda = damping * mean(diag G).
* line search (Bro 1998; Rajih, Comon & Harshman 2008): after sweep t, try the extrapolation
  A + t^(1/3) (A - A^prev) of all factors and keep it only if it lowers the loss.

For a conv kernel K [T, S, kh, kw] with factors (U_t, U_s, U_y, U_x) of rank R the convolution
becomes four (Lebedev et al. 2015): 1x1 S -> R (U_s^T), a kh x 1 depthwise conv on R channels
(U_y, vertical stride / padding / dilation), a 1 x kw depthwise conv (U_x, horizontal),
1x1 R -> T (U_t, and the bias).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .._validation import check_array, check_choice, check_float, check_int
from ..errors import ArgumentError, DTypeError

__all__ = ["CP", "cp_als", "cp_reconstruct", "khatri_rao", "cp_conv_macs", "cp_rank_for_macs", "cp_rank_bound"]


@dataclass
class CP:
    """Result of :func:`cp_als`: factors [I_n, R] (float64, column norms balanced across
    modes) and the relative loss ||X - X_hat||_F / ||X||_F after init and each sweep."""

    factors: list
    losses: list


def khatri_rao(mats) -> np.ndarray:
    """Column-wise Kronecker product: row (i_1, ..., i_k) in C order (the last index
    fastest) of column r is prod_j mats[j][i_j, r]."""
    out = mats[0]
    for m in mats[1:]:
        out = (out[:, None, :] * m[None, :, :]).reshape(-1, m.shape[1])
    return out


def cp_reconstruct(factors) -> np.ndarray:
    """X_hat = [[A_1, ..., A_N]]: the sum over r of outer products of the r-th columns."""
    shape = tuple(f.shape[0] for f in factors)
    return khatri_rao(factors).sum(axis=1).reshape(shape)


def _unfold(x, n):
    return np.moveaxis(x, n, 0).reshape(x.shape[n], -1)


def _rel_loss(x, factors, norm):
    return float(np.linalg.norm(x - cp_reconstruct(factors)) / norm)


def cp_rank_bound(shape) -> int:
    """An upper bound on the CP rank of any tensor of ``shape``: the product of every mode
    but the largest (the tensor is a sum of that many rank-one terms: one per fibre along the
    largest mode, i.e. per column of that unfolding).  A larger ``rank`` cannot fit better,
    only cost more, so it is refused."""
    dims = sorted(int(d) for d in shape)
    return int(np.prod(dims[:-1], dtype=object)) if len(dims) > 1 else 1


def cp_als(tensor, rank, *, n_iter: int = 500, tol: float = 1e-10, damping: float = 0.0,
           line_search: bool = True, init: str = "svd", seed: int = 0) -> CP:
    """Rank-``rank`` CP of ``tensor`` (N-way, float) by ALS with proximal damping and line
    search (module docstring).

    init : ``"svd"`` (leading left singular vectors of each unfolding, padded with Gaussian
    columns when rank > I_n) or ``"random"`` (Gaussian, from ``seed``).  Stops after
    ``n_iter`` sweeps or when the relative loss improves by less than ``tol``.  float64
    throughout.  The loss sequence is non-increasing (tests check it).
    """
    x = check_array(tensor, "tensor", min_ndim=2, finite=True)
    if x.dtype.kind != "f":
        raise DTypeError(f"tensor: expected a float array, got dtype {x.dtype.name}")
    x = x.astype(np.float64)
    R = check_int(rank, "rank", min_value=1, max_value=cp_rank_bound(x.shape))
    n_iter = check_int(n_iter, "n_iter", min_value=0)
    tol = check_float(tol, "tol", min_value=0.0)
    damping = check_float(damping, "damping", min_value=0.0)
    check_choice(init, "init", ("svd", "random"))
    rng = np.random.default_rng(check_int(seed, "seed"))
    N = x.ndim
    norm = float(np.linalg.norm(x)) or 1.0
    factors = []
    for n in range(N):
        cols = rng.standard_normal((x.shape[n], R))
        if init == "svd":
            u, s, _ = np.linalg.svd(_unfold(x, n), full_matrices=False)
            k = min(R, u.shape[1])
            cols[:, :k] = u[:, :k]
            cols[:, k:] /= np.sqrt(x.shape[n])
        factors.append(cols)
    # Scale the first factor by least squares so the start is not arbitrarily far.
    factors = _update(x, factors, 0, 0.0)
    losses = [_rel_loss(x, factors, norm)]
    prev = None
    for t in range(1, n_iter + 1):
        start = [f.copy() for f in factors]
        for n in range(N):
            factors = _update(x, factors, n, damping)
        loss = _rel_loss(x, factors, norm)
        if line_search and prev is not None:
            step = t ** (1.0 / 3.0)
            trial = [f + step * (f - p) for f, p in zip(factors, prev)]
            trial_loss = _rel_loss(x, trial, norm)
            if trial_loss < loss:
                factors, loss = trial, trial_loss
        prev = start
        losses.append(loss)
        if losses[-2] - loss < tol:
            break
    return CP(_balance(factors), losses)


def _update(x, factors, n, damping):
    others = [f for k, f in enumerate(factors) if k != n]
    gram = np.ones((factors[0].shape[1],) * 2)
    for f in others:
        gram *= f.T @ f
    rhs = _unfold(x, n) @ khatri_rao(others)
    lam = damping * float(np.mean(np.diag(gram)))
    if lam > 0:
        rhs = rhs + lam * factors[n]
        gram = gram + lam * np.eye(gram.shape[0])
    # lstsq rather than inv: the Gram matrix is singular while factors are collinear.
    new = np.linalg.lstsq(gram, rhs.T, rcond=None)[0].T
    out = list(factors)
    out[n] = new
    return out


def _balance(factors):
    """Rescale columns so every mode carries the same norm per component (the product, and
    so the tensor, is unchanged); factored layers then start with comparable scales."""
    norms = np.stack([np.linalg.norm(f, axis=0) for f in factors])
    norms[norms == 0] = 1.0
    target = np.prod(norms, axis=0) ** (1.0 / len(factors))
    return [f / nrm * target for f, nrm in zip(factors, norms)]


def cp_conv_macs(out_channels, in_channels, kh, kw, rank, in_hw, mid_hw, out_hw) -> int:
    """Per-image MACs of the CP conv: S R H W + R kh H' W + R kw H' W' + R T H' W'
    (``mid_hw`` = (H', W) is the size after the vertical depthwise conv)."""
    return int(in_channels * rank * in_hw[0] * in_hw[1] + rank * kh * mid_hw[0] * mid_hw[1]
               + rank * kw * out_hw[0] * out_hw[1] + rank * out_channels * out_hw[0] * out_hw[1])


def cp_rank_for_macs(weight_shape, fraction, in_hw, mid_hw, out_hw) -> int:
    """Largest R whose CP conv MACs are <= ``fraction`` of the dense conv's (and at most
    :func:`cp_rank_bound` of the kernel, beyond which a rank buys nothing)."""
    T, S, kh, kw = (int(v) for v in weight_shape)
    frac = check_float(fraction, "fraction", min_value=0.0, max_value=1.0, min_inclusive=False)
    dense = T * S * kh * kw * out_hw[0] * out_hw[1]
    per_rank = cp_conv_macs(T, S, kh, kw, 1, in_hw, mid_hw, out_hw)
    r = int(frac * dense // per_rank)
    if r < 1:
        raise ArgumentError(f"fraction: {frac} of the conv's MACs is below the rank-1 CP conv")
    return min(r, cp_rank_bound((T, S, kh, kw)))
