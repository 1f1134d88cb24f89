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
"""

from __future__ import annotations

import numpy as np

from .._validation import check_array, check_int
from ..errors import ArgumentError, ShapeError
from ..nn.functional import FLOAT_DTYPES
from ..nn.layers import Conv2d, Linear
from ..nn.module import Module
from .masks import apply_masks, prunable_layers

__all__ = ["check_nm", "nm_mask", "nm_masks", "nm_prune", "is_nm_sparse"]


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
