"""Deep Compression's weight sharing (Han, Mao & Dally, ICLR 2016, sec. 3).

A layer's weights are clustered into k = 2^b shared values by 1-D k-means:

    minimise  sum_i min_c (w_i - c_c)^2           (Lloyd's algorithm, eq. 1 of the paper)

with *linear* initialisation (centroids evenly spaced over [min w, max w]; the paper finds
it keeps the rare large weights that density-based initialisations lose).  Each weight is
then stored as a b-bit index into a float32 codebook.  Fine-tuning updates the centroids
with the gradients of the weights that share them, summed per cluster (eq. 3):

    dL/dc_k = sum_{i : idx_i = k} dL/dw_i

Weights outside ``mask`` (pruned weights) are not clustered and stay exactly zero.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .._validation import check_array, check_int
from ..errors import ArgumentError, ShapeError
from .packing import pack_bits, packed_nbytes


@dataclass
class SharedWeights:
    """codebook float32 [k]; indices uint8/uint16 (shape of the weight; 0 where masked out);
    mask bool (shape of the weight) or None (all weights shared); bits per index."""

    codebook: np.ndarray
    indices: np.ndarray
    mask: np.ndarray | None
    bits: int

    def dense(self) -> np.ndarray:
        """The float32 weight the codebook and indices stand for."""
        w = self.codebook[self.indices]
        return np.where(self.mask, w, np.float32(0)) if self.mask is not None else w

    def packed_indices(self) -> np.ndarray:
        """The indices of shared weights, b bits each (masked-out weights not stored)."""
        idx = self.indices[self.mask] if self.mask is not None else self.indices.reshape(-1)
        return pack_bits(idx.astype(np.uint8 if self.bits <= 8 else np.uint16), self.bits)

    def stored_bytes(self) -> int:
        """Stored bytes: codebook + b-bit indices (a sparse mask's positions are counted by
        the sparse format that holds them, not here)."""
        n = int(self.mask.sum()) if self.mask is not None else self.indices.size
        return self.codebook.nbytes + packed_nbytes(n, self.bits)


def _assign(values, codebook):
    """Index of the nearest centroid for each value (ties to the lower centroid)."""
    order = np.argsort(codebook, kind="stable")
    sorted_c = codebook[order]
    mids = (sorted_c[1:] + sorted_c[:-1]) / 2
    return order[np.searchsorted(mids, values, side="left")]


def kmeans_share(w, bits: int, *, mask=None, n_iter: int = 30, tol: float = 0.0) -> SharedWeights:
    """Cluster float32 weights ``w`` (any shape) into 2^bits shared values.

    mask : bool array like ``w`` selecting the weights to share (None: all).
    Lloyd iterations stop after ``n_iter`` or when no centroid moves more than ``tol``.
    Empty clusters keep their previous centroid.  Deterministic.
    """
    w = check_array(w, "w", dtypes=[np.float32, np.float64])
    bits = check_int(bits, "bits", min_value=1, max_value=16)
    check_int(n_iter, "n_iter", min_value=1)
    if mask is not None:
        mask = check_array(mask, "mask", dtypes=[np.bool_])
        if mask.shape != w.shape:
            raise ShapeError(f"mask: expected shape {w.shape}, got {mask.shape}")
    values = (w[mask] if mask is not None else w.reshape(-1)).astype(np.float64)
    k = 2**bits
    if values.size == 0:
        raise ArgumentError("w: no weights to share (the mask selects none)")
    if not np.all(np.isfinite(values)):
        # a NaN would make every centroid NaN (linspace from its min / max)
        raise ArgumentError("w: expected finite values, got NaN or Inf")
    c = np.linspace(values.min(), values.max(), k)  # linear initialisation
    for _ in range(n_iter):
        idx = _assign(values, c)
        sums = np.bincount(idx, weights=values, minlength=k)
        counts = np.bincount(idx, minlength=k)
        new = np.where(counts > 0, sums / np.maximum(counts, 1), c)
        moved = np.max(np.abs(new - c))
        c = new
        if moved <= tol:
            break
    codebook = c.astype(np.float32)
    idx_dtype = np.uint8 if bits <= 8 else np.uint16
    full = np.zeros(w.shape, idx_dtype)
    assigned = _assign(values, codebook.astype(np.float64)).astype(idx_dtype)
    if mask is not None:
        full[mask] = assigned
    else:
        full = assigned.reshape(w.shape)
    return SharedWeights(codebook, full, mask, bits)


def centroid_gradients(grad_w, shared: SharedWeights) -> np.ndarray:
    """dL/dcodebook: the weight gradients summed per cluster (Han et al. 2016, eq. 3)."""
    grad_w = check_array(grad_w, "grad_w", dtypes=[np.float32, np.float64])
    if grad_w.shape != shared.indices.shape:
        raise ShapeError(f"grad_w: expected shape {shared.indices.shape}, got {grad_w.shape}")
    sel = shared.mask if shared.mask is not None else np.ones(grad_w.shape, bool)
    g = np.bincount(shared.indices[sel].astype(np.int64), weights=grad_w[sel].astype(np.float64),
                    minlength=shared.codebook.size)
    return g.astype(np.float32)


# ---- a layer that trains its centroids ---------------------------------------------------------

from .. import nn as _nn  # noqa: E402  (layer classes below; the functions above need no nn)
from ..nn.module import Module as _Module, Parameter as _Parameter  # noqa: E402
from ..nn.spec import register_module as _register_module  # noqa: E402


def _fill(new, layer, bits, mask, n_iter):
    """Cluster ``layer``'s trained weights into the shared layer ``new`` (bias copied)."""
    sw = kmeans_share(layer.weight.data, bits, mask=mask, n_iter=n_iter)
    new.codebook.data = sw.codebook.copy()
    new.indices = sw.indices
    if mask is not None:
        new.mask = np.asarray(mask, np.bool_).copy()
    if layer.bias is not None:
        new.bias.data = layer.bias.data.copy()
    return new


@_register_module
class SharedLinear(_Module):
    """Linear whose weight is ``codebook[indices]`` (Deep Compression weight sharing).

    Forward: y = x W^T + b with W = codebook[indices] (masked-out weights 0).
    Backward: dL/dcodebook = per-cluster sums of dL/dW (eq. 3), dL/db = sum of G,
    dL/dx = G W.  Stored bytes: the codebook, the b-bit indices packed, and the bias.
    """

    def __init__(self, in_features: int, out_features: int, bits: int = 4, bias: bool = True,
                 masked: bool = False):
        super().__init__()
        self.in_features, self.out_features, self.bits = int(in_features), int(out_features), int(bits)
        self.codebook = _Parameter(np.zeros(2**self.bits, np.float32))
        self.register_buffer("indices", np.zeros((self.out_features, self.in_features),
                                                 np.uint8 if self.bits <= 8 else np.uint16))
        if masked:
            self.register_buffer("mask", np.ones((self.out_features, self.in_features), np.bool_))
        else:
            self.mask = None
        self.bias = _Parameter(np.zeros(self.out_features, np.float32)) if bias else None
        self._cache = None

    @classmethod
    def from_linear(cls, layer, bits: int, *, mask=None, n_iter: int = 30) -> "SharedLinear":
        """Cluster a trained nn.Linear's weights (optionally only those in ``mask``)."""
        new = cls(layer.in_features, layer.out_features, bits, layer.bias is not None, mask is not None)
        return _fill(new, layer, bits, mask, n_iter)

    def shared(self) -> SharedWeights:
        return SharedWeights(self.codebook.data, self.indices, self.mask, self.bits)

    def forward(self, x):
        w = self.shared().dense()
        self._cache = (np.asarray(x), w) if self.training else None
        return _nn.functional.linear(x, w, None if self.bias is None else self.bias.data)

    def backward(self, grad_out):
        x, w = self._cache_or_raise()
        g2 = grad_out.reshape(-1, self.out_features)
        gw = g2.T @ x.reshape(-1, self.in_features)
        self.codebook.accumulate_grad(centroid_gradients(gw, self.shared()))
        if self.bias is not None:
            self.bias.accumulate_grad(g2.sum(axis=0))
        return grad_out @ w

    def packed_bytes(self) -> int:
        """Bytes of the packed form (codebook + b-bit codes of the shared weights + bias);
        the state dict holds codes one per byte, so a report of saved bytes uses that and
        Deep Compression's encoder (refcompress.pipeline) produces the packed file."""
        return self.shared().stored_bytes() + (self.bias.data.nbytes if self.bias is not None else 0)

    def get_config(self):
        return {"in_features": self.in_features, "out_features": self.out_features, "bits": self.bits,
                "bias": self.bias is not None, "masked": self.mask is not None}


class _SharedWeightView:
    """Stands where a layer's ``weight`` Parameter would: ``.data`` is codebook[indices]
    (masked), and gradients given to it are summed per cluster into the codebook.  Not a
    Parameter, so it is neither saved nor seen by optimizers: the codebook is."""

    def __init__(self, layer):
        self._layer = layer

    @property
    def data(self):
        return self._layer.shared().dense()

    @property
    def shape(self):
        return self._layer.indices.shape

    @property
    def dtype(self):
        return np.dtype(np.float32)

    def accumulate_grad(self, g):
        self._layer.codebook.accumulate_grad(centroid_gradients(g, self._layer.shared()))


@_register_module
class SharedConv2d(_nn.Conv2d):
    """Conv2d whose weight is ``codebook[indices]``: nn.Conv2d's forward and backward run on
    the shared weight, and the weight gradient is summed per cluster into the codebook."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1, groups=1,
                 bias=True, bits: int = 4, masked: bool = False, rng=None):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias, rng=rng)
        shape = self.weight.shape
        del self.weight
        self.bits = int(bits)
        self.codebook = _Parameter(np.zeros(2**self.bits, np.float32))
        self.register_buffer("indices", np.zeros(shape, np.uint8 if self.bits <= 8 else np.uint16))
        if masked:
            self.register_buffer("mask", np.ones(shape, np.bool_))
        else:
            self.mask = None
        object.__setattr__(self, "weight", _SharedWeightView(self))

    @classmethod
    def from_conv(cls, layer, bits: int, *, mask=None, n_iter: int = 30) -> "SharedConv2d":
        new = cls(**layer.get_config(), bits=bits, masked=mask is not None)
        return _fill(new, layer, bits, mask, n_iter)

    def shared(self) -> SharedWeights:
        return SharedWeights(self.codebook.data, self.indices, self.mask, self.bits)

    def packed_bytes(self) -> int:
        """As SharedLinear.packed_bytes."""
        return self.shared().stored_bytes() + (self.bias.data.nbytes if self.bias is not None else 0)

    def get_config(self):
        return {**super().get_config(), "bits": self.bits, "masked": self.mask is not None}
