"""Sparse Linear layers: where unstructured and N:M pruning become smaller and faster.

A masked dense Linear still stores and multiplies every zero.  Converting it stores only
the survivors and runs the sparse kernels of :mod:`refcompress.kernels.sparse`
(docs/sparse_kernels.md):

* :class:`SparseLinear` — CSR (Han et al. 2015): ``values [nnz]`` float32, ``indices
  [nnz]`` column numbers in the narrowest type that holds ``in - 1`` (uint8 up to 256
  inputs, uint16 up to 65 536, else int32), ``indptr [out + 1]`` int32 (int64 only past
  2^31 - 1 entries).  Stored bytes = 4 nnz + b_idx nnz + b_ptr (out + 1) + 4 out (bias),
  against 4 out in + 4 out dense: CSR with uint8 indices wins below ~80 % density.
* :class:`NMLinear` — N:M (Mishra et al. 2021): ``values [out, in/M*N]`` float32,
  ``indices [out, in/M*N]`` uint8 positions inside each group of M.  Stored bytes =
  5 out in N/M + 4 out (+ 4 in for an input permutation); for 2:4 that is 62.5 % of dense.

Both compute y = x W^T + b, x [*, in] float32 -> y [*, out] float32, and have a backward
(so a converted model can be fine-tuned with its sparsity structure fixed):

    dL/dx = G W                              (W rebuilt dense: training, not inference)
    dL/dvalues[e] = sum_b G[b, row(e)] x[b, col(e)]     (only the stored entries learn)
    dL/db = sum_b G[b]

They are registered with :func:`refcompress.nn.register_module`, so save / load of a model
containing them works; ``stored_bytes()`` reports the bytes of the arrays they hold.
"""

from __future__ import annotations

import numpy as np

from .. import kernels
from .._validation import check_array, check_choice, check_int
from ..errors import ArgumentError, DTypeError, ShapeError
from ..kernels.sparse import csr_from_dense, csr_to_dense, nm_columns, nm_from_dense, nm_to_dense
from ..nn.layers import Linear
from ..nn.module import Module, Parameter
from ..nn.spec import register_module
from .magnitude import check_amount
from .masks import check_untied, prunable_layers, remove_mask
from .nm import check_nm, check_perm

__all__ = ["SparseLinear", "NMLinear", "to_sparse", "to_nm", "to_dense", "csr_stored_bytes",
           "nm_stored_bytes", "dense_stored_bytes"]

_INDEX_TYPES = ("uint8", "uint16", "int32")
_INDPTR_TYPES = ("int32", "int64")


def dense_stored_bytes(out_features: int, in_features: int, bias: bool = True) -> int:
    """4 out in (+ 4 out): a float32 Linear's weight and bias."""
    return 4 * out_features * in_features + (4 * out_features if bias else 0)


def csr_stored_bytes(out_features: int, in_features: int, nnz: int, bias: bool = True) -> int:
    """4 nnz + b_idx nnz + b_ptr (out + 1) (+ 4 out) with the narrowest index types."""
    b_idx = np.dtype(kernels.sparse.index_dtype_for(in_features)).itemsize
    b_ptr = 4 if nnz <= np.iinfo(np.int32).max else 8
    return 4 * nnz + b_idx * nnz + b_ptr * (out_features + 1) + (4 * out_features if bias else 0)


def nm_stored_bytes(out_features: int, in_features: int, n: int, m: int, bias: bool = True,
                    permuted: bool = False) -> int:
    """(4 + 1) out in n / m (+ 4 out) (+ 4 in): float32 values, uint8 positions, the bias and
    an int32 input permutation."""
    return (5 * out_features * (in_features // m) * n + (4 * out_features if bias else 0)
            + (4 * in_features if permuted else 0))


def _float32_x(x, in_features):
    x = check_array(x, "x", dtypes=(np.float32,), min_ndim=1)
    if x.shape[-1] != in_features:
        raise ShapeError(f"x: expected last dimension {in_features} (in_features), got shape {x.shape}")
    return x


def _bias_param(bias, out_features):
    if bias is None:
        return None
    b = check_array(bias, "bias", dtypes=(np.float32,), shape=(out_features,))
    return Parameter(np.array(b, copy=True))


def _dense_linear(layer) -> Linear:
    """The dense nn.Linear a sparse layer stands for (its dense_weight and bias)."""
    lin = Linear(layer.in_features, layer.out_features, bias=layer.bias is not None, rng=np.random.default_rng(0))
    lin.weight = Parameter(layer.dense_weight())
    if layer.bias is not None:
        lin.bias = Parameter(layer.bias.data.copy())
    return lin


@register_module
class SparseLinear(Module):
    """y = x W^T + b with W [out, in] stored as CSR and run by ``kernels.spmm_csr``.

    Build it with :meth:`from_dense` / :meth:`from_linear` (or :func:`to_sparse` on a whole
    model); the constructor makes empty arrays of the right shapes for loading a state dict.
    State: ``values`` (Parameter [nnz] float32), ``bias`` (Parameter [out] or None),
    buffers ``indptr`` [out + 1] and ``indices`` [nnz].
    """

    fixed_float_dtype = np.float32  # float32 kernels and scales: Module.to refuses other dtypes

    def __init__(self, in_features: int, out_features: int, nnz: int = 0, bias: bool = True,
                 index_dtype: str | None = None, indptr_dtype: str = "int32"):
        super().__init__()
        self.in_features = check_int(in_features, "in_features", min_value=1)
        self.out_features = check_int(out_features, "out_features", min_value=1)
        nnz = check_int(nnz, "nnz", min_value=0, max_value=self.in_features * self.out_features)
        idx_t = np.dtype(kernels.sparse.index_dtype_for(self.in_features)).name if index_dtype is None \
            else check_choice(index_dtype, "index_dtype", _INDEX_TYPES)
        if np.iinfo(np.dtype(idx_t)).max < self.in_features - 1:
            raise ArgumentError(f"index_dtype: {idx_t} cannot hold column {self.in_features - 1}")
        ptr_t = check_choice(indptr_dtype, "indptr_dtype", _INDPTR_TYPES)
        if nnz > np.iinfo(np.dtype(ptr_t)).max:
            raise ArgumentError(f"indptr_dtype: {ptr_t} cannot hold nnz = {nnz}")
        self.values = Parameter(np.zeros(nnz, np.float32))
        self.bias = Parameter(np.zeros(self.out_features, np.float32)) if bias else None
        ptr = np.zeros(self.out_features + 1, np.dtype(ptr_t))
        ptr[-1] = nnz  # a valid (if arbitrary) structure until real arrays are loaded
        if nnz:
            ptr[1:] = np.minimum(np.arange(1, self.out_features + 1) * self.in_features, nnz)
        self.register_buffer("indptr", ptr)
        cols = (np.arange(nnz) % self.in_features).astype(np.dtype(idx_t))
        self.register_buffer("indices", cols)
        self._cache = None
        self._packed = None  # kernels.PackedCSR of the current indptr / indices / values / bias
        self._packed_training = None  # the mode it was packed for (its form depends on it)

    @classmethod
    def from_dense(cls, weight, bias=None) -> "SparseLinear":
        """The CSR layer of the nonzeros of ``weight [out, in]`` float32 (zeros are pruned)."""
        w = check_array(weight, "weight", dtypes=(np.float32,), ndim=2, finite=True)
        csr = csr_from_dense(np.ascontiguousarray(w))
        nnz = int(csr.values.size)
        ptr_t = "int32" if nnz <= np.iinfo(np.int32).max else "int64"
        layer = cls(w.shape[1], w.shape[0], nnz, bias=bias is not None,
                    index_dtype=csr.indices.dtype.name, indptr_dtype=ptr_t)
        layer.values = Parameter(np.ascontiguousarray(csr.values, np.float32))
        layer.indptr = csr.indptr.astype(ptr_t)
        layer.indices = np.ascontiguousarray(csr.indices)
        layer.bias = _bias_param(bias, w.shape[0])
        return layer

    @classmethod
    def from_linear(cls, linear: Linear) -> "SparseLinear":
        """CSR layer of a (pruned) :class:`~refcompress.nn.Linear`."""
        if not isinstance(linear, Linear):
            raise DTypeError(f"linear: expected a Linear, got {type(linear).__name__}")
        return cls.from_dense(linear.weight.data, None if linear.bias is None else linear.bias.data)

    @property
    def nnz(self) -> int:
        return int(self.values.data.size)

    @property
    def sparsity(self) -> float:
        return 1.0 - self.nnz / (self.in_features * self.out_features)

    def dense_weight(self) -> np.ndarray:
        """W [out, in] float32 (zeros where nothing is stored)."""
        return csr_to_dense(self.indptr, self.indices, self.values.data, (self.out_features, self.in_features))

    def to_linear(self) -> Linear:
        return _dense_linear(self)

    def stored_bytes(self) -> int:
        """Bytes of values + indices + indptr (+ bias) as held."""
        b = self.values.data.nbytes + self.indices.nbytes + self.indptr.nbytes
        return b + (self.bias.data.nbytes if self.bias is not None else 0)

    def packed(self) -> "kernels.PackedCSR":
        """The layer's weight as a :class:`~refcompress.kernels.PackedCSR`: the structure is
        validated and laid out once (again only when ``indptr`` / ``indices`` are replaced, e.g.
        by loading a state dict); new ``values`` or ``bias`` arrays (fine-tuning) are swapped in
        with ``with_values``.  In training mode the layout is "rows" (it reads the held values,
        so in-place changes to ``values.data`` are seen without either); in eval mode it is
        ``pack_csr``'s "auto", which for a sparse layer on AVX-512 is the "sell" form: that
        holds copies of the values (every batch uses the values as packed), so in eval mode
        assign a new ``values.data`` array (as the optimisers do) rather than changing it in
        place."""
        # the registries read directly: Module.__getattr__ per attribute would cost more than a
        # small batch-1 product
        d = self.__dict__
        params, buffers = d["_parameters"], d["_buffers"]
        vals = params["values"].data
        bias = params.get("bias")
        b = None if bias is None else bias.data
        p = d.get("_packed")  # (a layer pickled before layers kept one has none)
        if p is None or p.indptr is not buffers["indptr"] or p.indices is not buffers["indices"] \
                or d.get("_packed_training") is not d["training"]:
            form = "rows" if d["training"] else "auto"
            p = self._packed = kernels.pack_csr(self.indptr, self.indices, vals,
                                                (self.out_features, self.in_features), b, form=form)
            self._packed_training = d["training"]
        elif p.source_values is not vals or p.bias is not b:
            p = self._packed = p.with_values(vals, b)
        return p

    def forward(self, x):
        if not (type(x) is np.ndarray and x.dtype == np.float32 and x.shape[-1:] == (self.in_features,)):
            x = _float32_x(x, self.in_features)
        y = kernels.spmm_csr(x, self.packed())
        self._cache = x if self.training else None
        return y

    def backward(self, grad_out):
        x = self._cache_or_raise()
        g = self._check_grad_out(grad_out, x.shape[:-1] + (self.out_features,))
        g2 = g.reshape(-1, self.out_features)
        x2 = x.reshape(-1, self.in_features)
        rows = np.repeat(np.arange(self.out_features), np.diff(self.indptr.astype(np.int64)))
        cols = self.indices.astype(np.int64)
        self.values.accumulate_grad(np.einsum("be,be->e", g2[:, rows], x2[:, cols]))
        if self.bias is not None:
            self.bias.accumulate_grad(g2.sum(axis=0))
        return g @ self.dense_weight()

    def get_config(self):
        return {"in_features": self.in_features, "out_features": self.out_features, "nnz": self.nnz,
                "bias": self.bias is not None, "index_dtype": self.indices.dtype.name,
                "indptr_dtype": self.indptr.dtype.name}


@register_module
class NMLinear(Module):
    """y = x W^T + b with W [out, in] in N:M form, run by ``kernels.spmm_nm``.

    State: ``values`` (Parameter [out, in/M*N] float32), ``bias`` (Parameter [out] or None),
    buffer ``indices`` [out, in/M*N] uint8 (position of each kept weight in its group).
    The positions are checked once per ``indices`` array (:meth:`packed`): change the
    structure by assigning a new array (as ``load_state_dict`` does), not in place.

    ``permuted=True`` adds buffer ``input_perm`` [in] int32, a permutation pi of the inputs
    (Pool & Yu 2021, :func:`refcompress.prune.nm_permutation`): the N:M groups run over
    x[:, pi], y = x[:, pi] W_pi^T + b with W_pi = W[:, pi], so the pattern holds in permuted
    order and the layer gathers its input once per call (one pass over x).  Build such a layer
    with ``from_dense(..., input_perm=pi)`` (or ``permuted=True`` and a loaded state dict);
    ``input_perm`` is checked to be a permutation whenever the array is replaced.
    """

    fixed_float_dtype = np.float32  # float32 kernels and scales: Module.to refuses other dtypes

    def __init__(self, in_features: int, out_features: int, n: int = 2, m: int = 4, bias: bool = True,
                 permuted: bool = False):
        super().__init__()
        self.in_features = check_int(in_features, "in_features", min_value=1)
        self.out_features = check_int(out_features, "out_features", min_value=1)
        self.n, self.m = check_nm(n, m)
        if self.in_features % self.m:
            raise ShapeError(f"in_features: expected a multiple of m = {self.m}, got {self.in_features}")
        k = self.in_features // self.m * self.n
        self.values = Parameter(np.zeros((self.out_features, k), np.float32))
        self.bias = Parameter(np.zeros(self.out_features, np.float32)) if bias else None
        self.register_buffer("indices", np.tile(np.arange(self.n, dtype=np.uint8),
                                                (self.out_features, k // self.n)))
        if not isinstance(permuted, (bool, np.bool_)):
            raise ArgumentError(f"permuted: expected True or False, got {permuted!r}")
        if permuted:
            self.register_buffer("input_perm", np.arange(self.in_features, dtype=np.int32))
        else:
            self.input_perm = None
        self._perm_checked = None  # the input_perm array last validated (checked again when replaced)
        self._packed = None  # kernels.PackedNM of the current indices / values / bias
        self._cache = None

    @classmethod
    def from_dense(cls, weight, n: int, m: int, bias=None, input_perm=None) -> "NMLinear":
        """N:M layer of ``weight [out, in]`` float32, which must already satisfy the pattern
        (prune with :func:`refcompress.prune.nm_prune` first) -- along the permuted inputs
        ``weight[:, input_perm]`` when ``input_perm`` (a permutation of 0 .. in - 1) is given."""
        w = check_array(weight, "weight", dtypes=(np.float32,), ndim=2, finite=True)
        n, m = check_nm(n, m)
        if w.shape[1] % m:
            raise ShapeError(f"weight: expected in_features (shape[1]) divisible by m = {m}, got shape {w.shape}")
        if input_perm is not None:
            input_perm = check_perm(input_perm, w.shape[1], "input_perm")
            w = w[:, input_perm]
        try:
            nm = nm_from_dense(np.ascontiguousarray(w), n, m)
        except ArgumentError as e:
            if input_perm is None:
                raise
            raise ArgumentError(f"weight, input_perm: in the permuted order weight[:, input_perm], {e}") from None
        layer = cls(w.shape[1], w.shape[0], n, m, bias=bias is not None, permuted=input_perm is not None)
        layer.values = Parameter(np.ascontiguousarray(nm.values))
        layer.indices = np.ascontiguousarray(nm.indices)
        layer.bias = _bias_param(bias, w.shape[0])
        if input_perm is not None:
            layer.input_perm = input_perm.astype(np.int32)
        return layer

    @classmethod
    def from_linear(cls, linear: Linear, n: int, m: int) -> "NMLinear":
        if not isinstance(linear, Linear):
            raise DTypeError(f"linear: expected a Linear, got {type(linear).__name__}")
        return cls.from_dense(linear.weight.data, n, m, None if linear.bias is None else linear.bias.data)

    def dense_weight(self) -> np.ndarray:
        """W [out, in] float32 in the original input order (W[:, pi] = W_pi when permuted)."""
        wp = nm_to_dense(self.values.data, self.indices, self.n, self.m)
        perm = self._checked_perm()
        if perm is None:
            return wp
        w = np.empty_like(wp)
        w[:, perm] = wp
        return w

    def _checked_perm(self):
        perm = self.input_perm
        if perm is not None and perm is not self._perm_checked:
            check_perm(perm, self.in_features, "input_perm")
            self._perm_checked = perm
        return perm

    def to_linear(self) -> Linear:
        return _dense_linear(self)

    def stored_bytes(self) -> int:
        b = self.values.data.nbytes + self.indices.nbytes
        b += self.input_perm.nbytes if self.input_perm is not None else 0  # int32, 4 in
        return b + (self.bias.data.nbytes if self.bias is not None else 0)

    def forward(self, x):
        x = _float32_x(x, self.in_features)
        perm = self._checked_perm()
        if perm is not None:
            x = np.take(x, perm, axis=-1)
        y = kernels.spmm_nm(x, self.packed())
        self._cache = x if self.training else None  # the permuted input, which the values meet
        return y

    def packed(self) -> "kernels.PackedNM":
        """The layer's weight as a :class:`~refcompress.kernels.PackedNM`: the positions are
        checked once (again only when ``indices`` is replaced, e.g. by loading a state dict;
        change the structure by assigning a new array, not in place); new ``values`` or
        ``bias`` arrays are swapped in with ``with_values``, and in-place changes to them are
        seen (the packed object holds them)."""
        d = self.__dict__
        vals = d["_parameters"]["values"].data
        bias = self.bias
        b = None if bias is None else bias.data
        p = d.get("_packed")  # (a layer pickled before layers kept one has none)
        if p is None or p.source_indices is not d["_buffers"]["indices"]:
            p = self._packed = kernels.pack_nm(vals, self.indices, self.n, self.m, b)
        elif p.values is not vals or p.bias is not b:
            p = self._packed = p.with_values(vals, b)
        return p

    def backward(self, grad_out):
        x = self._cache_or_raise()
        g = self._check_grad_out(grad_out, x.shape[:-1] + (self.out_features,))
        g2 = g.reshape(-1, self.out_features)
        x2 = x.reshape(-1, self.in_features)
        cols = nm_columns(self.indices, self.n, self.m)  # [out, k]
        self.values.accumulate_grad(np.einsum("bo,bok->ok", g2, x2[:, cols]))
        if self.bias is not None:
            self.bias.accumulate_grad(g2.sum(axis=0))
        return g @ self.dense_weight()

    def get_config(self):
        return {"in_features": self.in_features, "out_features": self.out_features,
                "n": self.n, "m": self.m, "bias": self.bias is not None,
                "permuted": self.input_perm is not None}


def _float32_weight(name, layer):
    # the sparse kernels are float32; refused here so that the error names the layer
    w = layer.weight.data
    if w.dtype != np.float32:
        raise DTypeError(f"layers: {name!r} has {w.dtype.name} weights, expected float32")
    return w


def _convert(model, layers, build):
    if isinstance(model, Linear):
        raise ArgumentError("model: convert a Linear directly with SparseLinear.from_linear / "
                            "NMLinear.from_linear (there is no parent to put it in)")
    named = prunable_layers(model, layers, types=(Linear,))
    # a Linear to convert that is used twice would be replaced at one place only, and lose
    # its mask at both (a tied Linear left out of ``layers`` is fine)
    check_untied(model, "converting it", types=(Linear,), only={id(layer) for _, layer in named})
    new = {name: build(name, layer) for name, layer in named}  # build all before changing any
    for name, layer in named:
        if new[name] is not None:
            remove_mask(layer)
            model.set_submodule(name, new[name])
    return model


def to_sparse(model: Module, *, layers=None, min_sparsity: float = 0.0) -> Module:
    """Replace (pruned) Linear layers of ``model`` by :class:`SparseLinear`, in place.

    layers       : names (default every Linear);
    min_sparsity : skip layers with a smaller fraction of zero weights (dense is cheaper
                   for dense-ish layers: docs/sparse_kernels.md has the break-even).
    Masks are removed (the zeros are what CSR drops).  Returns ``model``.  A Linear used at
    two places of the model is refused if it is to be converted (ArgumentError naming both),
    before anything changes.
    """
    min_s = check_amount(min_sparsity, "min_sparsity")

    def build(name, layer):
        w = _float32_weight(name, layer)
        if np.count_nonzero(w == 0) / w.size < min_s:
            return None
        return SparseLinear.from_linear(layer)

    return _convert(model, layers, build)


def to_nm(model: Module, n: int = 2, m: int = 4, *, layers=None) -> Module:
    """Replace N:M-pruned Linear layers of ``model`` by :class:`NMLinear`, in place.

    A layer that violates the pattern is an error naming it (prune with ``nm_prune``); a
    Linear to convert that is used at two places of the model is refused, naming both."""
    n, m = check_nm(n, m)

    def build(name, layer):
        w = _float32_weight(name, layer)
        if w.shape[1] % m:
            raise ShapeError(f"layers: {name!r} has {w.shape[1]} inputs, not divisible by m = {m}")
        try:
            return NMLinear.from_linear(layer, n, m)
        except ArgumentError as e:
            raise ArgumentError(f"layers: {name!r} is not {n}:{m} sparse ({e})") from None

    return _convert(model, layers, build)


def to_dense(model: Module) -> Module:
    """Replace every SparseLinear / NMLinear of ``model`` by an equal dense Linear, in place."""
    for name, layer in [(n, m) for n, m in model.named_modules() if isinstance(m, (SparseLinear, NMLinear))]:
        if name == "":
            raise ArgumentError("model: is itself a sparse layer; call model.to_linear()")
        model.set_submodule(name, layer.to_linear())
    return model
