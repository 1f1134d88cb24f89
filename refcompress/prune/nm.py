"""N:M semi-structured sparsity (Mishra et al. 2021, "Accelerating Sparse Deep Neural
Networks", arXiv:2104.08378; 2:4 is the pattern of NVIDIA's sparse tensor cores).

In every group of M consecutive weights along the input dimension, only the N largest
magnitudes are kept:

    group g of row i:  G = {W[i, gM], ..., W[i, gM + M - 1]},
    M_ij = 1  iff  |W_ij| is among the N largest of its group.

Sparsity is exactly 1 - N/M, and storage is compact: N values plus N small indices
(log2 M bits, one uint8 here) per group (:class:`refcompress.prune.NMLinear`).  For a
Conv2d weight [out, in, kh, kw] the groups run along the input channels (the reduction
dimension that the hardware walks), so ``in`` must be divisible by M.

Ties: within a group, among equal magnitudes the lower position is kept (a stable sort).
Fine-tuning keeps the pattern by applying the mask (:func:`apply_mask`): masked gradients
and re-masked weights mean the survivors are trained and the zeros stay in place.

Channel permutation (Pool & Yu 2021, "Channel Permutations for N:M Sparsity", NeurIPS):
which inputs share a group is a choice.  Permuting the input channels by pi before forming
the groups (W[:, pi], and the layer reads x[:, pi]) changes nothing in the float product
but lets the mask keep more importance when important channels no longer share a group;
:func:`nm_permutation` searches pi (see :class:`refcompress.prune.NMLinear`'s
``input_perm`` for running such a layer).
"""

from __future__ import annotations

import numpy as np

from .._validation import check_array, check_int
from ..errors import ArgumentError, ShapeError
from ..nn.functional import FLOAT_DTYPES
from ..nn.layers import Conv2d, Linear
from ..nn.module import Module
from .masks import apply_masks, prunable_layers

__all__ = ["check_nm", "nm_mask", "nm_masks", "nm_prune", "is_nm_sparse", "nm_permutation", "nm_retained", "check_perm"]


def check_nm(n, m) -> tuple:
    """(n, m) as ints with 1 <= n <= m <= 256 (indices are stored in uint8)."""
    n = check_int(n, "n", min_value=1)
    m = check_int(m, "m", min_value=1, max_value=256)
    if n > m:
        raise ArgumentError(f"n: expected n <= m = {m} (keep at most the whole group), got n = {n}")
    return n, m


def _groups_last(w):
    # [out, in] stays; [out, in, kh, kw] -> [out, kh, kw, in] so groups run along in.
    return w if w.ndim == 2 else np.moveaxis(w, 1, -1)


def nm_mask(weight, n: int, m: int) -> np.ndarray:
    """Boolean N:M mask (True = kept) of a Linear [out, in] or Conv2d [out, in, kh, kw]
    weight: the n largest |w| of every m consecutive inputs.  ``in`` must be divisible by m."""
    w = check_array(weight, "weight", dtypes=FLOAT_DTYPES, ndim=(2, 4), finite=True)
    n, m = check_nm(n, m)
    if w.shape[1] % m:
        raise ShapeError(
            f"weight: expected the input dimension (shape[1]) divisible by m = {m}, got shape {w.shape}")
    wl = _groups_last(w)
    g = np.abs(wl).reshape(-1, m)
    # Stable argsort of -|w|: equal magnitudes keep position order, so the lower is kept.
    order = np.argsort(-g, axis=1, kind="stable")[:, :n]
    keep = np.zeros(g.shape, dtype=bool)
    np.put_along_axis(keep, order, True, axis=1)
    keep = keep.reshape(wl.shape)
    return keep if w.ndim == 2 else np.moveaxis(keep, -1, 1)


def _check_scores(scores, m):
    s = check_array(scores, "scores", dtypes=FLOAT_DTYPES, ndim=2, finite=True)
    if np.any(s < 0):
        raise ArgumentError("scores: expected importances >= 0 (e.g. |W| or Wanda's |W| ||x||)")
    if s.shape[1] % m:
        raise ShapeError(f"scores: expected shape[1] (the inputs) divisible by m = {m}, got shape {s.shape}")
    return s.astype(np.float64)


def _top_n_sum(s, n):
    """Sum over the last axis of the n largest entries (a group's retained importance)."""
    return np.sort(s, axis=-1)[..., -n:].sum(axis=-1)


def nm_retained(scores, n: int, m: int, perm=None) -> float:
    """The importance an N:M mask keeps: sum over rows i and groups g of the n largest
    scores[i, pi(j)], j in g (groups of m consecutive positions after permuting the columns
    by ``perm``; identity when None).  scores: [out, in], >= 0."""
    n, m = check_nm(n, m)
    s = _check_scores(scores, m)
    if perm is not None:
        s = s[:, check_perm(perm, s.shape[1])]
    return float(_top_n_sum(s.reshape(s.shape[0], -1, m), n).sum())


def check_perm(perm, k: int, name: str = "perm") -> np.ndarray:
    """``perm`` as an integer array holding each of 0 .. k - 1 once (an input permutation)."""
    p = check_array(perm, name, ndim=1)
    if p.dtype.kind not in "iu" or p.shape[0] != k or not np.array_equal(np.sort(p), np.arange(k)):
        raise ArgumentError(f"{name}: expected a permutation of 0 .. {k - 1} (integers), got "
                            f"{p.dtype} of shape {p.shape}")
    return p


def nm_permutation(scores, n: int, m: int, *, sweeps: int = 2, seed: int = 0) -> np.ndarray:
    """An input-channel permutation pi [in] (int64) that raises the importance an N:M mask
    keeps, :func:`nm_retained` (Pool & Yu 2021, "Channel Permutations for N:M Sparsity"):

        maximise over pi   sum_i sum_g  top-n_{j in g} scores[i, pi(j)].

    Start: channels sorted by total importance sum_i scores[i, j] and dealt round-robin to
    the in/m groups, so the in/m most important channels land in different groups (two
    important channels sharing a group is what forces a mask to drop one) -- or the identity,
    if that keeps more, so the result never keeps less than no permutation.  Then ``sweeps``
    rounds of greedy swaps (the paper's channel-swap search, over random pairs of groups
    instead of all pairs): each round pairs the groups at random and, for each pair, applies
    the best of the m^2 single-channel exchanges if it raises the objective.  The objective
    never decreases.  Prune ``W[:, pi]`` and run the layer on ``x[:, pi]``.

    The search is greedy: it finds a better grouping, not the best one.

    scores : [out, in] importances >= 0 (float), in divisible by m.
    sweeps : rounds of swaps (0: the round-robin start only).
    """
    n, m = check_nm(n, m)
    s = _check_scores(scores, m)
    sweeps = check_int(sweeps, "sweeps", min_value=0)
    seed = check_int(seed, "seed", min_value=0)
    ng = s.shape[1] // m
    order = np.argsort(-s.sum(axis=0), kind="stable")
    groups = order.reshape(m, ng).T.copy()  # [groups, m]: group g holds the ranks g, g + ng, ...
    identity = np.arange(s.shape[1]).reshape(ng, m)
    if _top_n_sum(s[:, identity], n).sum() >= _top_n_sum(s[:, groups], n).sum():
        groups = identity
    # Candidate exchanges of a pair (A, B): index 0 is "no exchange", so ties keep the pair.
    ia, ib = np.divmod(np.arange(m * m), m)
    rng = np.random.default_rng(seed)
    for _ in range(sweeps):
        pairs = rng.permutation(ng)[: ng - ng % 2].reshape(-1, 2)
        for a, b in pairs:
            ca = np.repeat(groups[a][None], m * m + 1, axis=0)
            cb = np.repeat(groups[b][None], m * m + 1, axis=0)
            ca[1 + np.arange(m * m), ia] = groups[b][ib]
            cb[1 + np.arange(m * m), ib] = groups[a][ia]
            kept = _top_n_sum(s[:, ca], n).sum(axis=0) + _top_n_sum(s[:, cb], n).sum(axis=0)
            best = int(np.argmax(kept))
            if kept[best] <= kept[0] * (1 + 1e-12):  # "no exchange" wins ties and rounding noise
                best = 0
            groups[a], groups[b] = ca[best], cb[best]
    return groups.reshape(-1).astype(np.int64)


def is_nm_sparse(weight, n: int, m: int) -> bool:
    """True when every group of m consecutive inputs holds at most n nonzeros."""
    w = check_array(weight, "weight", ndim=(2, 4))
    n, m = check_nm(n, m)
    if w.shape[1] % m:
        return False
    return bool(np.all((_groups_last(w).reshape(-1, m) != 0).sum(axis=1) <= n))


def nm_masks(model: Module, n: int = 2, m: int = 4, *, layers=None) -> dict:
    """{layer name: N:M mask} for ``layers`` (default every Linear; Conv2d by name)."""
    n, m = check_nm(n, m)
    named = prunable_layers(model, layers, types=(Linear,) if layers is None else (Linear, Conv2d))
    out = {}
    for name, layer in named:
        w = layer.weight.data
        if w.shape[1] % m:
            raise ShapeError(f"layers: {name!r} has {w.shape[1]} inputs, not divisible by m = {m}; "
                             f"leave it out of layers")
        out[name] = nm_mask(w, n, m)
    return out


def nm_prune(model: Module, n: int = 2, m: int = 4, *, layers=None) -> dict:
    """Compute :func:`nm_masks` and apply them (the pattern is kept through fine-tuning)."""
    masks = nm_masks(model, n, m, layers=layers)
    apply_masks(model, masks)
    return masks
