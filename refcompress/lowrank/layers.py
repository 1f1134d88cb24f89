"""Factored layers that train: LowRankLinear, Tucker2Conv2d, CPConv2d.

Each is a composite :class:`~refcompress.nn.Module` of ordinary nn layers (so forward,
backward, the optimizers, state dicts and specs all work unchanged), registered with
:func:`refcompress.nn.register_module` so ``to_spec`` / ``from_spec`` rebuild it.  Each has
a ``from_*`` constructor that runs the decomposition on a trained layer and ``to_dense()``
that multiplies the factors back into one layer, for checking.

=================  ============================================  ==================================
layer              children (PyTorch equivalent)                 replaces
=================  ============================================  ==================================
LowRankLinear      first  Linear(n, r, bias=False)               Linear(n, m): W ~ A B
                   second Linear(r, m)                           (second.weight = A, first = B)
Tucker2Conv2d      first  Conv2d(S, R4, 1, bias=False)           Conv2d(S, T, k): Tucker-2
                   core   Conv2d(R4, R3, k, stride, pad, dil)
                   last   Conv2d(R3, T, 1)
CPConv2d           pointwise_in  Conv2d(S, R, 1, bias=False)     Conv2d(S, T, k): CP rank R
                   vertical   Conv2d(R, R, (kh,1), groups=R)
                   horizontal Conv2d(R, R, (1,kw), groups=R)
                   pointwise_out Conv2d(R, T, 1)
=================  ============================================  ==================================

LowRankLinear's eval-mode forward on float32 runs the fused factored kernel
(:func:`refcompress.kernels.lowrank_linear`: y = (x B^T) A^T + b in one C call); training
and float64 use the two NumPy products, whose cached inputs the backward needs.
"""

from __future__ import annotations

import operator

import numpy as np

from .. import _conv
from .. import kernels
from .._validation import check_array, check_int
from ..errors import ArgumentError, DTypeError, NotDifferentiableError, ShapeError
from ..nn import Conv2d, Linear, Module, register_module
from ..nn.container import Chain
from .cp import cp_als, cp_rank_bound, cp_reconstruct
from .data_aware import whitened_svd
from .ranks import select_rank
from .svd import check_rank, truncated_svd
from .tucker import tucker2, tucker2_ranks_vbmf

__all__ = ["LowRankLinear", "QuantizedLowRankLinear", "Tucker2Conv2d", "CPConv2d"]


def _check_bool(value, name):
    if not isinstance(value, (bool, np.bool_)):
        raise DTypeError(f"{name}: expected a bool, got {type(value).__name__} {value!r}")
    return bool(value)


def _set(param, value):
    value = np.asarray(value)
    # A factor of another shape would be installed silently and only fail later, in
    # backward or in load_state_dict against the configured shape.
    if value.shape != param.data.shape:
        raise ShapeError(f"value: expected the parameter's shape {param.data.shape}, got {value.shape}")
    param.data = np.ascontiguousarray(value, dtype=param.data.dtype)


@register_module
class LowRankLinear(Module):
    """y = (x B^T) A^T + b with B = ``first.weight`` [r, n], A = ``second.weight`` [m, r].

    x [*, n] -> y [*, m]; (m + n) r weights instead of m n (Denton et al. 2014).  Backward
    is the two Linear backwards in reverse (dL/dA = G^T h, dL/dB = (G A)^T x, h = x B^T).
    """

    def __init__(self, in_features: int, out_features: int, rank: int, bias: bool = True, rng=None):
        super().__init__()
        self.in_features = check_int(in_features, "in_features", min_value=1)
        self.out_features = check_int(out_features, "out_features", min_value=1)
        self.rank = check_rank(rank, self.out_features, self.in_features)
        self.first = Linear(self.in_features, self.rank, bias=False, rng=rng)
        self.second = Linear(self.rank, self.out_features, bias=_check_bool(bias, "bias"), rng=rng)

    def forward(self, x):
        if not self.training:
            xa = np.asarray(x)
            key = self._factors()
            if key is not None and xa.dtype == np.float32 and key[0].dtype == np.float32 and xa.ndim >= 1:
                if xa.ndim == 2:  # the usual call: no reshape either way (~0.6 us of a few)
                    return kernels.lowrank_linear(xa, self._packed(key))
                y = kernels.lowrank_linear(np.reshape(xa, (-1, xa.shape[-1])), self._packed(key))
                return y.reshape(*xa.shape[:-1], self.out_features)
        return self.second(self.first(x))

    def _factors(self):
        """(first weight, second weight, bias or None) arrays, read from the Module registries
        (``_modules``, ``_parameters``): ``self.first`` and the like first fail the normal
        attribute lookup and then run Module.__getattr__, ~0.45 us each.  None when a
        factor is no longer a plain Linear."""
        mods = self._modules
        # Children replaced by other layers (prune.to_sparse makes them SparseLinear) run
        # their own forwards: the fused kernel is for two dense factors.
        if type(mods["first"]) is not Linear or type(mods["second"]) is not Linear:
            return None
        first, second = mods["first"]._parameters, mods["second"]._parameters
        b = second.get("bias")  # a Linear without bias has None outside the registry
        return first["weight"].data, second["weight"].data, None if b is None else b.data

    def _packed(self, key=None):
        """The factors packed for the kernel, cached against the identity of the parameter
        arrays: the optimizers and load_state_dict assign new arrays, which repacks.  (An
        in-place edit of ``.data`` is not seen: call :meth:`clear_cache` after one.)"""
        w1, w2, b = key or self._factors()
        cached = self.__dict__.get("_pack")
        if cached is None or cached[0] is not w1 or cached[1] is not w2 or cached[2] is not b:
            cached = (w1, w2, b, kernels.pack_lowrank(w1, w2, b))
            object.__setattr__(self, "_pack", cached)
        return cached[3]

    def clear_cache(self) -> None:
        """Drop the packed factors (needed only after editing ``.data`` in place)."""
        self.__dict__.pop("_pack", None)

    def backward(self, grad_out):
        return self.first.backward(self.second.backward(grad_out))

    def get_config(self):
        return {"in_features": self.in_features, "out_features": self.out_features,
                "rank": self.rank, "bias": self.second.bias is not None}

    @classmethod
    def from_linear(cls, linear, rank=None, *, energy=None, budget=None, vbmf: bool = False,
                    x=None, damping: float = 1e-4) -> "LowRankLinear":
        """Factor a trained :class:`~refcompress.nn.Linear` (weights copied, bias kept).

        Rank from exactly one of ``rank`` / ``energy`` / ``budget`` / ``vbmf``
        (:func:`~refcompress.lowrank.select_rank`).  With calibration inputs ``x`` [N, n]
        the factors minimise the output error (:func:`whitened_svd`); otherwise the weight
        error (:func:`truncated_svd`).
        """
        if not isinstance(linear, Linear):
            raise DTypeError(f"linear: expected refcompress.nn.Linear, got {type(linear).__name__}")
        w = linear.weight.data
        r = select_rank(w, rank=rank, energy=energy, budget=budget, vbmf=vbmf)
        a, b = truncated_svd(w, r) if x is None else whitened_svd(w, x, r, damping=damping)
        layer = cls(linear.in_features, linear.out_features, r, bias=linear.bias is not None)
        layer.to(w.dtype)
        _set(layer.first.weight, b)
        _set(layer.second.weight, a)
        if linear.bias is not None:
            _set(layer.second.bias, linear.bias.data)
        layer.train(linear.training)
        return layer

    def to_dense(self) -> Linear:
        """The equivalent :class:`~refcompress.nn.Linear` with W = A B."""
        lin = Linear(self.in_features, self.out_features, bias=self.second.bias is not None)
        lin.to(self.first.weight.dtype)
        _set(lin.weight, self.second.weight.data.astype(np.float64) @ self.first.weight.data)
        if self.second.bias is not None:
            _set(lin.bias, self.second.bias.data)
        return lin


@register_module
class QuantizedLowRankLinear(Module):
    """The int8 form of a :class:`LowRankLinear`, for inference: float32 x [*, n] -> float32
    y [*, m] in one C call of :func:`refcompress.kernels.lowrank_linear_q8` (x quantized
    inside the call, both products exact integer sums, h requantized to uint8, y
    dequantized; docs/lowrank.md section 7).

    State (buffers, so ``state_dict`` / ``refcompress.io`` save the int8 codes, not floats):
    ``v_q`` int8 [r, n] and ``u_q`` int8 [m, r] (narrow range, symmetric per row) with
    ``v_scale`` [r] and ``u_scale`` [m]; ``bias`` float32 [m] (or None); the activations'
    uint8 affine qparams ``x_scale``, ``x_zero_point``, ``h_scale``, ``h_zero_point`` (one
    element each).  Build one with :meth:`from_lowrank` from a trained layer and calibration
    inputs.  Weights take (m + n) r bytes instead of 4 (m + n) r.  Inference only: backward
    raises NotDifferentiableError (fine-tune the float :class:`LowRankLinear`, then convert).
    """

    fixed_float_dtype = np.float32  # float32 kernels and scales: Module.to refuses other dtypes

    def __init__(self, in_features: int, out_features: int, rank: int, bias: bool = True):
        super().__init__()
        self.in_features = check_int(in_features, "in_features", min_value=1)
        self.out_features = check_int(out_features, "out_features", min_value=1)
        self.rank = check_rank(rank, self.out_features, self.in_features)
        self.register_buffer("v_q", np.zeros((self.rank, self.in_features), np.int8))
        self.register_buffer("v_scale", np.ones(self.rank, np.float32))
        self.register_buffer("u_q", np.zeros((self.out_features, self.rank), np.int8))
        self.register_buffer("u_scale", np.ones(self.out_features, np.float32))
        if _check_bool(bias, "bias"):
            self.register_buffer("bias", np.zeros(self.out_features, np.float32))
        else:
            self.bias = None
        for name, dtype in (("x_scale", np.float32), ("x_zero_point", np.int32), ("h_scale", np.float32),
                            ("h_zero_point", np.int32)):
            self.register_buffer(name, np.ones(1, dtype) if dtype is np.float32 else np.zeros(1, dtype))

    @classmethod
    def from_lowrank(cls, layer: LowRankLinear, calibration) -> "QuantizedLowRankLinear":
        """Quantize a trained :class:`LowRankLinear`: both factors to int8 per row, and the
        activations' ranges (x and h = x B^T, min / max widened to 0) measured on float32
        calibration inputs [N, n] (:meth:`refcompress.kernels.QuantizedLowRank.calibrate`)."""
        if not isinstance(layer, LowRankLinear):
            raise DTypeError(f"layer: expected a LowRankLinear, got {type(layer).__name__}")
        factors = layer._factors()
        if factors is None:
            raise ArgumentError(f"layer: expected two dense Linear factors, got {type(layer.first).__name__} and "
                                f"{type(layer.second).__name__} (convert before replacing the factors)")
        x = np.asarray(calibration)
        if x.ndim != 2 or x.shape[1] != layer.in_features or x.shape[0] == 0:
            raise ArgumentError(f"calibration: expected float32 inputs of shape (N, {layer.in_features}), N >= 1, "
                                f"got shape {x.shape}")
        x = check_array(x, "calibration", dtypes=[np.float32], finite=True)
        # copies: the layer's state must not share memory with the float layer's parameters
        w1, w2, b = (None if a is None else np.array(a, np.float32) for a in factors)
        q = kernels.QuantizedLowRank.calibrate(w1, w2, b, x)
        out = cls(layer.in_features, layer.out_features, layer.rank, bias=b is not None)
        out.v_q, out.v_scale, out.u_q, out.u_scale = q.v_q, q.v_scale, q.u_q, q.u_scale
        if b is not None:
            out.bias = q.bias
        out.x_scale, out.h_scale = np.array([q.x_scale], np.float32), np.array([q.h_scale], np.float32)
        out.x_zero_point = np.array([q.x_zero_point], np.int32)
        out.h_zero_point = np.array([q.h_zero_point], np.int32)
        object.__setattr__(out, "_q8", (out._quantized_key(), q))  # the kernel's layer, made once
        return out.eval()

    def _quantized_key(self):
        """The buffer arrays the kernel's layer is made from (read from the registry:
        Module.__getattr__ costs ~0.45 us a name)."""
        b = self.__dict__["_buffers"]
        return (b["v_q"], b["v_scale"], b["u_q"], b["u_scale"], b.get("bias"), b["x_scale"], b["x_zero_point"],
                b["h_scale"], b["h_zero_point"])

    def quantized(self) -> "kernels.QuantizedLowRank":
        """The kernel's layer, made from the buffers and kept while they are the same arrays
        (load_state_dict installs new ones, which rebuilds it; after editing a buffer in
        place, call :meth:`clear_cache`)."""
        key = self._quantized_key()
        cached = self.__dict__.get("_q8")
        if cached is None or not all(map(operator.is_, key, cached[0])):
            q = kernels.QuantizedLowRank.from_codes(
                key[0], key[1], key[2], key[3], key[4], float(key[5][0]), int(key[6][0]), float(key[7][0]),
                int(key[8][0]))
            cached = (key, q)
            object.__setattr__(self, "_q8", cached)
        return cached[1]

    def clear_cache(self) -> None:
        """Drop the kernel's layer (needed only after editing a buffer in place)."""
        self.__dict__.pop("_q8", None)

    def forward(self, x):
        n = self.__dict__["in_features"]
        if type(x) is np.ndarray and x.ndim == 2 and x.dtype == np.float32 and x.shape[1] == n:  # the usual x
            return kernels.lowrank_linear_q8(x, self.quantized())
        x = np.asarray(x)
        if x.dtype != np.float32 or x.ndim < 1 or x.shape[-1] != n:
            raise ArgumentError(f"x: expected float32 [..., {n}], got {x.dtype.name} {x.shape}")
        if x.ndim == 2:
            return kernels.lowrank_linear_q8(x, self.quantized())
        y = kernels.lowrank_linear_q8(np.reshape(x, (-1, self.in_features)), self.quantized())
        return y.reshape(*x.shape[:-1], self.out_features)

    def backward(self, grad_out):
        # The class the trainers catch (distill skips such layers), as the quant package's
        # integer layers raise: not Module's bare NotImplementedError.
        raise NotDifferentiableError(
            f"{type(self).__name__} is an int8 inference layer: fine-tune the float LowRankLinear, then convert")

    def get_config(self):
        return {"in_features": self.in_features, "out_features": self.out_features, "rank": self.rank,
                "bias": self.bias is not None}


def _check_dense_conv(conv, what):
    if not isinstance(conv, Conv2d):
        raise DTypeError(f"conv: expected refcompress.nn.Conv2d, got {type(conv).__name__}")
    if conv.groups != 1:
        raise ArgumentError(
            f"conv.groups: {what} factors the input-channel mode of a dense conv (groups=1); got "
            f"groups={conv.groups} (a grouped or depthwise conv has no shared input mode to factor)")


def _conv_geometry(self, in_channels, out_channels, kernel_size, stride, padding, dilation):
    self.in_channels = check_int(in_channels, "in_channels", min_value=1)
    self.out_channels = check_int(out_channels, "out_channels", min_value=1)
    self.kernel_size = _conv.as_pair(kernel_size, "kernel_size", 1)
    self.stride = _conv.as_pair(stride, "stride", 1)
    self.padding = _conv.as_pair(padding, "padding", 0)
    self.dilation = _conv.as_pair(dilation, "dilation", 1)


def _geometry_config(self):
    return {"in_channels": self.in_channels, "out_channels": self.out_channels,
            "kernel_size": list(self.kernel_size), "stride": list(self.stride),
            "padding": list(self.padding), "dilation": list(self.dilation)}


def _conv_from(conv, cls, **extra):
    layer = cls(conv.in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride,
                padding=conv.padding, dilation=conv.dilation, bias=conv.bias is not None, **extra)
    layer.to(conv.weight.data.dtype)
    return layer


def _dense_conv(self, weight, bias_param):
    c = Conv2d(self.in_channels, self.out_channels, self.kernel_size, stride=self.stride,
               padding=self.padding, dilation=self.dilation, bias=bias_param is not None)
    c.to(weight.dtype)
    _set(c.weight, weight)
    if bias_param is not None:
        _set(c.bias, bias_param.data)
    return c


@register_module
class Tucker2Conv2d(Chain):
    """Tucker-2 factored conv (Kim et al. 2016): 1x1 (S -> R4), kh x kw (R4 -> R3, the
    original stride / padding / dilation), 1x1 (R3 -> T, bias).  x [N, S, H, W] ->
    [N, T, H', W']; ``ranks`` = (R3, R4) = (out_rank, in_rank)."""

    def __init__(self, in_channels, out_channels, kernel_size, ranks, stride=1, padding=0,
                 dilation=1, bias: bool = True, rng=None):
        super().__init__()
        _conv_geometry(self, in_channels, out_channels, kernel_size, stride, padding, dilation)
        if not (isinstance(ranks, (tuple, list)) and len(ranks) == 2):
            raise ArgumentError(f"ranks: expected a pair (out_rank, in_rank), got {ranks!r}")
        self.ranks = (check_int(ranks[0], "ranks[0] (out_rank)", min_value=1, max_value=self.out_channels),
                      check_int(ranks[1], "ranks[1] (in_rank)", min_value=1, max_value=self.in_channels))
        r3, r4 = self.ranks
        self.first = Conv2d(self.in_channels, r4, 1, bias=False, rng=rng)
        self.core = Conv2d(r4, r3, self.kernel_size, stride=self.stride, padding=self.padding,
                           dilation=self.dilation, bias=False, rng=rng)
        self.last = Conv2d(r3, self.out_channels, 1, bias=_check_bool(bias, "bias"), rng=rng)

    def get_config(self):
        return {**_geometry_config(self), "ranks": list(self.ranks), "bias": self.last.bias is not None}

    @classmethod
    def from_conv(cls, conv, ranks="vbmf", *, n_iter: int = 50) -> "Tucker2Conv2d":
        """Decompose a trained dense :class:`~refcompress.nn.Conv2d`: ``ranks`` is (R3, R4)
        or ``"vbmf"`` (EVBMF on the two unfoldings, Kim et al. 2016).  HOSVD + ``n_iter``
        HOOI sweeps.  Grouped / depthwise convs are refused."""
        _check_dense_conv(conv, "Tucker-2")
        w = conv.weight.data
        if isinstance(ranks, str):
            if ranks != "vbmf":
                raise ArgumentError(f"ranks: expected a pair (out_rank, in_rank) or 'vbmf', got {ranks!r}")
            ranks = tucker2_ranks_vbmf(w)
        t = tucker2(w, ranks, n_iter=n_iter)
        layer = _conv_from(conv, cls, ranks=tuple(ranks))
        _set(layer.first.weight, t.u_in.T[:, :, None, None])
        _set(layer.core.weight, t.core)
        _set(layer.last.weight, t.u_out[:, :, None, None])
        if conv.bias is not None:
            _set(layer.last.bias, conv.bias.data)
        layer.train(conv.training)
        return layer

    def kernel(self) -> np.ndarray:
        """The reconstructed kernel [T, S, kh, kw] = C x_1 U_out x_2 U_in (float64)."""
        return np.einsum("abij,ta,bs->tsij", self.core.weight.data.astype(np.float64),
                         self.last.weight.data[:, :, 0, 0], self.first.weight.data[:, :, 0, 0])

    def to_dense(self) -> Conv2d:
        """The equivalent :class:`~refcompress.nn.Conv2d` with the reconstructed kernel."""
        return _dense_conv(self, self.kernel().astype(self.core.weight.dtype), self.last.bias)


@register_module
class CPConv2d(Chain):
    """CP factored conv (Lebedev et al. 2015): 1x1 (S -> R), kh x 1 depthwise (vertical
    stride / padding / dilation), 1 x kw depthwise (horizontal), 1x1 (R -> T, bias).
    x [N, S, H, W] -> [N, T, H', W']."""

    def __init__(self, in_channels, out_channels, kernel_size, rank, stride=1, padding=0,
                 dilation=1, bias: bool = True, rng=None):
        super().__init__()
        _conv_geometry(self, in_channels, out_channels, kernel_size, stride, padding, dilation)
        (kh, kw), (sh, sw), (ph, pw), (dh, dw) = self.kernel_size, self.stride, self.padding, self.dilation
        self.rank = R = check_int(rank, "rank", min_value=1,
                                  max_value=cp_rank_bound((self.out_channels, self.in_channels, kh, kw)))
        self.pointwise_in = Conv2d(self.in_channels, R, 1, bias=False, rng=rng)
        self.vertical = Conv2d(R, R, (kh, 1), stride=(sh, 1), padding=(ph, 0), dilation=(dh, 1),
                               groups=R, bias=False, rng=rng)
        self.horizontal = Conv2d(R, R, (1, kw), stride=(1, sw), padding=(0, pw), dilation=(1, dw),
                                 groups=R, bias=False, rng=rng)
        self.pointwise_out = Conv2d(R, self.out_channels, 1, bias=_check_bool(bias, "bias"), rng=rng)

    def get_config(self):
        return {**_geometry_config(self), "rank": self.rank, "bias": self.pointwise_out.bias is not None}

    @classmethod
    def from_conv(cls, conv, rank, *, n_iter: int = 500, tol: float = 1e-8, damping: float = 0.0,
                  line_search: bool = True, seed: int = 0) -> "CPConv2d":
        """Decompose a trained dense :class:`~refcompress.nn.Conv2d` by rank-``rank`` CP-ALS
        (:func:`~refcompress.lowrank.cp_als`).  Grouped / depthwise convs are refused."""
        _check_dense_conv(conv, "CP")
        w = conv.weight.data
        cp = cp_als(w, rank, n_iter=n_iter, tol=tol, damping=damping, line_search=line_search, seed=seed)
        ut, us, uy, ux = cp.factors
        layer = _conv_from(conv, cls, rank=rank)
        _set(layer.pointwise_in.weight, us.T[:, :, None, None])
        _set(layer.vertical.weight, uy.T[:, None, :, None])
        _set(layer.horizontal.weight, ux.T[:, None, None, :])
        _set(layer.pointwise_out.weight, ut[:, :, None, None])
        if conv.bias is not None:
            _set(layer.pointwise_out.bias, conv.bias.data)
        layer.train(conv.training)
        return layer

    def kernel(self) -> np.ndarray:
        """The reconstructed kernel [T, S, kh, kw] = [[U_t, U_s, U_y, U_x]] (float64)."""
        f = [self.pointwise_out.weight.data[:, :, 0, 0], self.pointwise_in.weight.data[:, :, 0, 0].T,
             self.vertical.weight.data[:, 0, :, 0].T, self.horizontal.weight.data[:, 0, 0, :].T]
        return cp_reconstruct([a.astype(np.float64) for a in f])

    def to_dense(self) -> Conv2d:
        """The equivalent :class:`~refcompress.nn.Conv2d` with the reconstructed kernel."""
        return _dense_conv(self, self.kernel().astype(self.pointwise_in.weight.dtype), self.pointwise_out.bias)
