"""The factored (low-rank) Linear: y = U (V x) + b in one call, float32 and int8.

Shapes (PyTorch Linear convention for both factors)::

    x [B, n],  v [r, n] (first factor),  u [m, r] (second factor),  bias [m]  ->  y [B, m]
    h = x v^T  [B, r],    y = h u^T + bias.

float32 (op ``lowrank_linear``).  The reference is the two NumPy products.  The C kernel
packs v^T and u^T once into 32-column panels and processes 48-row blocks of x whose h is
produced and consumed while in cache (csrc/lowrank/); batch 1 computes h as r dot
products over v's own rows, then y from the u^T panels.  Float sums are not reassociation-
invariant, so C and NumPy differ in the last bits; both are held to the forward-error
bound of the summation (Higham, *Accuracy and Stability of Numerical Algorithms*, 2002,
eq. 3.5), element by element, against the exact result computed in float64:

    |y_hat - y| <= E_h |u|^T + gamma_{r+1} ((|h| + E_h) |u|^T + |bias|) + (r + 1) 2^-149,
    E_h = gamma_n |x| |v|^T + n 2^-149,   gamma_k = k u / (1 - k u),  u = 2^-24,

the first term being the error of h carried through u, the second the error of the second
sum (r products and the bias add).  The 2^-149 terms cover products that underflow into the
subnormal range (each off by at most half a subnormal spacing, 2^-150, kept at 2^-149 as
the sparse kernels' bound does; sums of subnormals are exact): n per element of h, r + 1
per element of y.  :func:`lowrank_error_bound` computes it.

int8 (op ``lowrank_linear_q8``).  Both factors are quantized symmetrically per output row
(int8, narrow range [-127, 127]); the activation x arrives as uint8 with (s_x, z_x).  The
definition is two exact :func:`~refcompress.kernels.qgemm` products:

    h_q = requantize_float( (x_q - z_x) @ v_q^T ;  M_j = s_x s_v[j] / s_h,  z_h )   uint8
    y   = float32( (h_q - z_h) @ u_q^T + bias_q ) * (s_h s_u[i])                     float32

with bias_q = round_half_even(bias / (s_h s_u)) (int32).  Made from float factors (the
constructor, :meth:`QuantizedLowRank.calibrate`), s_u[i] = max(max|u_i| / 127,
|bias_i| / (s_h B)), B = (2^31 - 1 - r max(z_h, 255 - z_h) 127)(1 - 2^-20) - 1, so |bias_q|
<= B: the second sum with its bias cannot overflow int32, and a row of u that is tiny or 0
against its bias (a dead output) keeps the bias to ~1 / B relative.  The intermediate is requantized
to uint8, as an integer-only pipeline must do anyway.  The C kernel (csrc/lowrank/
lowrank_q8.c) runs both products in one call, block of rows by block of rows so that h_q
stays in cache, with qgemm's own row packing, zero-point corrections (precomputed per
layer), micro-tiles and epilogues; on AVX-512 VNNI CPUs the uint8 activations are
vpdpbusd's unsigned operand as they are and a signed copy of the packed factors (kept by
the layer, as many bytes again as the packed factors) the other, which saves the row packing
and the per-row correction.  Every integer sum is exact, so it is bit-exact against the
NumPy reference on every ISA variant (tests check it with tolerance 0).

``lowrank_linear_q8`` also takes float32 x: it is then quantized first, with the layer's
(s_x, z_x) and the rule of :func:`~refcompress.kernels.quantize` (ONNX QuantizeLinear,
x_q = saturate(round_half_even(x / s_x) + z_x)).  In C that happens inside the same call,
row block by row block, by the thread that multiplies the block, so a layer fed float
activations pays no separate quantize call.
"""

from __future__ import annotations

import numpy as np

from .._validation import check_array, check_float, check_int
from ..errors import ArgumentError, ShapeError
from . import _native, _registry
from ._frozen import Frozen
from ._registry import Op, check_rc, register
from .qgemm import (INT32_MAX, Dequantize, Requantize, _epilogue, _output_spec, k_bound, pack_weights,
                    qgemm_reference)
from .quantize import quantize, quantize_reference

__all__ = ["PackedLowRank", "pack_lowrank", "lowrank_linear", "lowrank_batch1_threads", "lowrank_error_bound",
           "QuantizedLowRank", "lowrank_linear_q8", "gamma"]

U32 = 2.0 ** -24
#: 2^-149, the subnormal spacing of float32: twice the error of a product rounded to it
_TINY = 2.0 ** -149


def gamma(k: int, unit_roundoff: float = U32) -> float:
    """gamma_k = k u / (1 - k u) (Higham 2002, Lemma 3.1)."""
    return k * unit_roundoff / (1.0 - k * unit_roundoff)


# ---- float32 ------------------------------------------------------------------------------------


_F32, _U8 = np.dtype(np.float32), np.dtype(np.uint8)


class PackedLowRank(Frozen):
    """float32 factors v [r, n], u [m, r] and bias [m] (or None), validated and packed once
    for the C kernel: v^T and u^T in 32-column panels, and v itself, which batch 1 reads
    row by row, as a copy at a cache-line start (r * n floats more than the caller's v;
    docs/lowrank.md section 7).  The reference reads the same v, u, bias.  The C kernel
    reads that v, the panels made from v and u here, and the caller's bias: pack again
    after editing any of them in place.  Attributes cannot be reassigned after construction
    (AttributeError): the C kernel trusts the sizes and pointers set here."""

    _FROZEN_HINT = "pack_lowrank the new factors"

    def __init__(self, v, u, bias=None):
        v = check_array(v, "v", dtypes=[np.float32], ndim=2, contiguous=True)
        # a copy always, not only where the caller's v is unaligned: what this object
        # computes with then does not depend on where the caller's array starts
        own = _native.aligned_empty(v.shape, np.float32)
        own[...] = v
        v = own
        r, n = v.shape
        u = check_array(u, "u", dtypes=[np.float32], ndim=2, contiguous=True)
        if u.shape[1] != r:
            raise ShapeError(f"u: expected shape (m, {r}) to match v's rank {r}, got {u.shape}")
        m = u.shape[0]
        if bias is not None:
            bias = check_array(bias, "bias", dtypes=[np.float32], shape=(m,), contiguous=True)
        self.v, self.u, self.bias = v, u, bias
        self.n, self.r, self.m = n, r, m
        self.empty = r * n * m == 0  # nothing for C to do: y is the bias (or 0)
        self.packed = None
        self._c_args = None
        if _native.lib is not None and not self.empty:
            self._pack()
        self._freeze()

    def __reduce__(self):
        # pickle / deepcopy: cffi pointers cannot be copied, so the copy is packed anew
        return (PackedLowRank, (self.v, self.u, self.bias))

    def _pack(self):
        """Pack for C and keep the cffi pointers the kernel takes (v, packed, bias) and the
        batch-1 workspace size: per call, only x, y and the workspace are new pointers."""
        lib, ptr = _native.lib, _native.ptr
        n, r, m = self.n, self.r, self.m
        # at a cache-line start, as v is: the kernels stream both with 64-byte loads
        packed = _native.aligned_empty(lib.rc_lowrank_packed_size(n, r, m), np.float32)
        check_rc(lib.rc_lowrank_pack_f32(ptr("float *", self.v), ptr("float *", self.u), n, r, m,
                                         ptr("float *", packed)), "pack_lowrank")
        c_args = (ptr("float *", self.v), ptr("float *", packed),
                  _native.ffi.NULL if self.bias is None else ptr("float *", self.bias))
        # written directly: the object may already be frozen (packed lazily by a first call)
        for k, v in (("packed", packed), ("_c_args", c_args), ("_ws1", lib.rc_lowrank_workspace_size(1, r))):
            object.__setattr__(self, k, v)
        return c_args

    def __repr__(self):
        return f"PackedLowRank(n={self.n}, r={self.r}, m={self.m}, bias={self.bias is not None})"


def pack_lowrank(v, u, bias=None) -> PackedLowRank:
    """Validate and pack float32 factors once per layer (see :class:`PackedLowRank`)."""
    return PackedLowRank(v, u, bias)


def lowrank_linear_reference(x, p):
    """NumPy definition: y = (x v^T) u^T + bias, float32."""
    y = (x @ p.v.T) @ p.u.T
    return y + p.bias if p.bias is not None else y


def _lowrank_linear_c(x, p, isa, threads):
    lib, fb = _native.lib, _native.ffi.from_buffer
    c_args = p._c_args or p._pack()
    B = len(x)
    y = np.empty((B, p.m), _F32)
    # batch 1 of a rank <= 2048 needs no workspace (h on the C stack: _ws1 is 0)
    nbytes = p._ws1 if B == 1 else lib.rc_lowrank_workspace_size(B, p.r)
    ws = _native.workspace(nbytes)[2] if nbytes else _native.ffi.NULL
    t = _native.F32_ARRAY
    rc = lib.rc_lowrank_f32(fb(t, x), B, p.n, p.r, p.m, *c_args, fb(t, y), ws, isa, threads)
    if rc:
        check_rc(rc, "lowrank_linear")
    return y


_TOL_DOC = ("|y - y_exact| <= E_h |u|^T + gamma_{r+1} ((|h| + E_h)|u|^T + |bias|) + (r + 1) 2^-149, "
            "E_h = gamma_n |x||v|^T + n 2^-149, element-wise, gamma_k = k 2^-24 / (1 - k 2^-24)")
register(Op("lowrank_linear", lowrank_linear_reference, _lowrank_linear_c, ("portable", "avx2", "avx512"),
            tolerance=U32, tolerance_doc=_TOL_DOC, doc=__doc__))


def lowrank_linear(x, v, u=None, bias=None) -> np.ndarray:
    """y = (x v^T) u^T + bias for float32 x [B, n], v [r, n], u [m, r], bias [m] -> y [B, m].

    ``v`` may be a :class:`PackedLowRank` (then ``u`` and ``bias`` come from it and must be
    None): pack once per layer, call many times.  Within :func:`lowrank_error_bound` of the
    exact result on every backend.
    """
    # A packed layer and an x that check_array would pass unchanged: the same checks,
    # inline, because a batch-1 layer call is a few microseconds in all.
    if (type(v) is PackedLowRank and u is None and bias is None and type(x) is np.ndarray
            and x.dtype is _F32 and x.ndim == 2 and x.shape[1] == v.n and x.flags.c_contiguous):
        p = v
    else:
        x, p = _check_args(x, v, u, bias)
    impl, isa, threads = _registry.resolve_kept("lowrank_linear")
    if isa is None or p.empty:  # the reference, or an empty factor (nothing for C to do)
        return lowrank_linear_reference(x, p)
    return impl(x, p, isa, threads)  # positional: keywords cost ~40 ns of a ~1.2 us call


def lowrank_batch1_threads(n: int, r: int, m: int, threads: int) -> int:
    """How many threads the C kernel runs a batch-1 call of a layer [m, n] of rank r on when
    given ``threads`` (0: OpenMP's default): it splits the rank only when r (n + m) > 131072
    and every thread gets >= 8 rows of h (docs/lowrank.md section 7).  1 without the C
    extension or without OpenMP."""
    n, r, m = (check_int(a, name, min_value=1, max_value=2**62) for a, name in ((n, "n"), (r, "r"), (m, "m")))
    threads = check_int(threads, "threads", min_value=0, max_value=2**31 - 1)
    return 1 if _native.lib is None else int(_native.lib.rc_lowrank_batch1_threads(n, r, m, threads))


def _check_args(x, v, u, bias):
    if isinstance(v, PackedLowRank):
        if u is not None or bias is not None:
            raise ArgumentError("u, bias: pass them to pack_lowrank, not with packed factors")
        p = v
    else:
        if u is None:
            raise ArgumentError("u: expected the second factor [m, r], got None")
        p = PackedLowRank(v, u, bias)
    x = check_array(x, "x", dtypes=[np.float32], ndim=2, contiguous=True)
    if x.shape[1] != p.n:
        raise ShapeError(f"x: expected shape (batch, {p.n}) to match v [r={p.r}, n={p.n}], got {x.shape}")
    return x, p


def lowrank_error_bound(x, v, u, bias=None) -> np.ndarray:
    """The element-wise bound on |y_hat - y_exact| of the module docstring, float64 [B, m]:
    E_h |u|^T + gamma_{r+1} ((|h| + E_h) |u|^T + |bias|) + (r + 1) 2^-149, with
    E_h = gamma_n |x| |v|^T + n 2^-149 (the 2^-149 terms: products in the subnormal range)."""
    x64, v64, u64 = (np.abs(np.asarray(a, np.float64)) for a in (x, v, u))
    n, r = v64.shape[1], v64.shape[0]
    hx = x64 @ v64.T  # sum |x||v|
    h_abs = np.abs(np.asarray(x, np.float64) @ np.asarray(v, np.float64).T)
    b = 0.0 if bias is None else np.abs(np.asarray(bias, np.float64))
    gn, gr = gamma(n), gamma(r + 1)
    e_h = gn * hx + n * _TINY  # the error of each element of h
    return e_h @ u64.T + gr * ((h_abs + e_h) @ u64.T + b) + (r + 1) * _TINY


# ---- int8 ---------------------------------------------------------------------------------------


def _sym_int8(w, min_scale=None):
    """Per-row symmetric narrow-range int8: s = max(max|w_row| / 127, min_scale_row) (1 for
    a row that is 0 with no minimum), q = rint(w / s)."""
    amax = np.max(np.abs(w), axis=1).astype(np.float32)
    s = amax / np.float32(127)
    if min_scale is not None:
        s = np.maximum(s, min_scale.astype(np.float32))
    s = np.where(s > 0, s, np.float32(1)).astype(np.float32)
    q = quantize(np.ascontiguousarray(w, np.float32), s, np.zeros(s.size, np.int64), axis=0,
                 dtype=np.int8, qmin=-127, qmax=127)
    return q, s


def _bias_code_limit(r, h_zero_point) -> int:
    """B, the largest |bias_q| the scale rule aims for: the second product's bound
    r max|h_q - z_h| 127 + max|bias_q| <= 2^31 - 1 (:func:`~refcompress.kernels.qgemm.k_bound`)
    leaves INT32_MAX - r max(z_h, 255 - z_h) 127 for the bias; a margin of 2^-20 of it (and
    1) covers the float32 roundings of s_u and s_h s_u and the rounding of the code."""
    avail = INT32_MAX - r * max(h_zero_point, 255 - h_zero_point) * 127
    return max(int(avail * (1.0 - 2.0 ** -20)) - 1, 0)


def _u_min_scale(bias, r, h_scale, h_zero_point):
    """The per-row floor |b_j| / (s_h B) of s_u (None without a bias): with it the bias code
    b_j / (s_h s_u_j) is at most B, so the second int32 sum cannot overflow whatever the
    weights.  It only binds on rows whose weights are tiny against the bias (a dead output
    row, whose codes then round to 0, as they should), and a row of zeros with a bias gets
    s_u from the bias alone, so the bias is kept to ~1 / B relative (not rounded to whole
    units of s_h s_u)."""
    if bias is None:
        return None
    sh = float(check_float(h_scale, "h_scale", min_value=0.0, min_inclusive=False))
    zh = check_int(h_zero_point, "h_zero_point", min_value=0, max_value=255)
    limit = _bias_code_limit(r, zh)
    if limit == 0:
        return None  # r too large for any bias: _setup refuses it with its own message
    return np.abs(bias.astype(np.float64)) / (np.float64(np.float32(sh)) * limit)


def _rebuild_quantized_lowrank(state):
    q = object.__new__(QuantizedLowRank)
    state.setdefault("bias", None)  # (pickled before the layer kept its float bias: bias_q has it)
    for k, v in state.items():  # (object.__setattr__: see _frozen)
        object.__setattr__(q, k, v)
    # the workspace size from this build's rc_lowrank_q8_workspace_size, not the pickler's
    object.__setattr__(q, "_c_args", None)
    object.__setattr__(q, "_ws_last", (-1, 0))
    if _native.lib is not None and not q.empty:
        q._prepare_c()
    q._freeze()
    return q


class QuantizedLowRank(Frozen):
    """An int8 factored Linear: quantized factors packed for qgemm, and the scales.

    v_q [r, n] int8 with s_v [r], u_q [m, r] int8 with s_u [m] (symmetric per row), the
    input's (s_x, z_x) and the intermediate's (s_h, z_h) (uint8, affine), bias_q [m] int32.
    Build with the constructor (given the activation quantizers), :meth:`calibrate`
    (which measures them on calibration inputs) or :meth:`from_codes` (factors already
    quantized, e.g. a saved layer's).  Attributes cannot be reassigned after construction
    (AttributeError): the C kernel trusts the sizes, scales and pointers set here.
    """

    _FROZEN_HINT = "build a new QuantizedLowRank (constructor, calibrate or from_codes)"

    def __init__(self, v, u, bias, x_scale, x_zero_point, h_scale, h_zero_point):
        v, u, bias = _float_factors(v, u, bias)
        p = PackedLowRank(v, u, bias)  # validates shapes
        v_q, v_scale = _sym_int8(p.v)
        # s_u_j = max(max|u_j| / 127, |b_j| / (s_h B)): the bias code fits the int32 sum
        u_q, u_scale = _sym_int8(p.u, _u_min_scale(p.bias, p.r, h_scale, h_zero_point))
        self._setup(v_q, v_scale, u_q, u_scale, p.bias, x_scale, x_zero_point, h_scale, h_zero_point)

    @classmethod
    def from_codes(cls, v_q, v_scale, u_q, u_scale, bias, x_scale, x_zero_point, h_scale,
                   h_zero_point) -> "QuantizedLowRank":
        """The layer of factors already quantized: v_q int8 [r, n] and u_q int8 [m, r], both
        in the narrow range [-127, 127], with their per-row scales v_scale float32 [r] and
        u_scale float32 [m] (finite, > 0); bias float32 [m] or None; the activations' qparams
        as for the constructor.  What the constructor and :meth:`calibrate` make from float
        factors, given as codes (the constructor's ``v_q``, ``v_scale``, ... attributes)."""
        v_q = check_array(v_q, "v_q", dtypes=[np.int8], ndim=2, contiguous=True)
        r, n = v_q.shape
        if r == 0 or n == 0:
            raise ShapeError(f"v_q: expected a rank r >= 1 and n >= 1, got shape {v_q.shape}")
        u_q = check_array(u_q, "u_q", dtypes=[np.int8], ndim=2, contiguous=True)
        m = u_q.shape[0]
        if u_q.shape[1] != r:
            raise ShapeError(f"u_q: expected shape (m, {r}) (r = v_q.shape[0]), got {u_q.shape}")
        for name, a in (("v_q", v_q), ("u_q", u_q)):
            if a.size and int(a.min()) < -127:
                raise ArgumentError(f"{name}: expected codes in the narrow range [-127, 127], got -128")
        v_scale = check_array(v_scale, "v_scale", dtypes=[np.float32], shape=(r,), contiguous=True, finite=True)
        u_scale = check_array(u_scale, "u_scale", dtypes=[np.float32], shape=(m,), contiguous=True, finite=True)
        for name, a in (("v_scale", v_scale), ("u_scale", u_scale)):
            if np.any(a <= 0):
                raise ArgumentError(f"{name}: expected scales > 0, got {a[a <= 0][0]!r}")
        if bias is not None:
            bias = check_array(bias, "bias", dtypes=[np.float32], shape=(m,), contiguous=True, finite=True)
        q = object.__new__(cls)
        q._setup(v_q, v_scale, u_q, u_scale, bias, x_scale, x_zero_point, h_scale, h_zero_point)
        return q

    def _setup(self, v_q, v_scale, u_q, u_scale, bias, x_scale, x_zero_point, h_scale, h_zero_point):
        """Everything from the quantized factors (validated by the caller) and the qparams."""
        (self.r, self.n), self.m = v_q.shape, u_q.shape[0]
        self.x_scale = np.float32(check_float(x_scale, "x_scale", min_value=0.0, min_inclusive=False))
        self.h_scale = np.float32(check_float(h_scale, "h_scale", min_value=0.0, min_inclusive=False))
        self.x_zero_point = check_int(x_zero_point, "x_zero_point", min_value=0, max_value=255)
        self.h_zero_point = check_int(h_zero_point, "h_zero_point", min_value=0, max_value=255)
        self.v_q, self.v_scale, self.u_q, self.u_scale = v_q, v_scale, u_q, u_scale
        self.bias = bias
        out_scale = (self.h_scale * self.u_scale).astype(np.float32)
        if bias is None:
            self.bias_q = None
        else:
            bq = np.rint(bias.astype(np.float64) / out_scale.astype(np.float64))
            self.bias_q = np.clip(bq, -(2 ** 31) + 1, 2 ** 31 - 1).astype(np.int32)
        # Both int32 sums (the second with the bias) must fit for any input, or the C kernel
        # would wrap where the reference does not.
        max_bias = 0 if self.bias_q is None or self.m == 0 else int(np.max(np.abs(self.bias_q.astype(np.int64))))
        for K, name, z, mb in ((self.n, "v", self.x_zero_point, 0), (self.r, "u", self.h_zero_point, max_bias)):
            bound = k_bound(np.uint8, z, 127, mb)
            if K > bound:
                extra = (f" with the quantized bias (max |bias / (s_h s_u)| = {mb}): expected a smaller bias "
                         "or a larger h_scale") if mb else ""
                raise ArgumentError(f"{name}: inner dimension {K} exceeds the int32 bound {bound}{extra}")
        self.packed_v = pack_weights(np.ascontiguousarray(self.v_q.T))
        self.packed_u = pack_weights(np.ascontiguousarray(self.u_q.T))
        mult = (self.x_scale * self.v_scale / self.h_scale).astype(np.float32)
        self.requant = Requantize(mult, self.h_zero_point, np.uint8, "float")
        self.dequant = Dequantize(out_scale)
        self._spec1 = _output_spec(self.requant, self.r)
        self._spec2 = _output_spec(self.dequant, self.m)
        self.empty = self.m == 0  # nothing for C to do (r = 0 or n = 0 cannot be quantized)
        self._c_args = None
        self._ws_last = (-1, 0)
        if _native.lib is not None and not self.empty:
            self._prepare_c()
        self._freeze()

    #: what _prepare_c derives (cffi pointers and the arrays they point into), and the
    #: workspace size of the last batch (a size from another build could be too small)
    _C_STATE = ("_c_args", "_keep", "_cols", "_signed", "_ws_last")

    def __reduce__(self):
        # pickle / deepcopy: everything but the C state (cffi pointers cannot be copied);
        # the copy prepares its own from its copied packed factors
        state = {k: v for k, v in self.__dict__.items() if k not in self._C_STATE}
        return (_rebuild_quantized_lowrank, (state,))

    def _prepare_c(self):
        """Everything of the fused C call that depends on the layer only: the epilogues,
        both products' zero-point corrections, and the signed copy of the packed factors
        the AVX-512 VNNI block multiplies (rc_lowrank_q8_prepare)."""
        lib, ptr = _native.lib, _native.ptr
        epi_h, keep_h, _ = _epilogue(self._spec1, None, self.r)
        epi_y, keep_y, _ = _epilogue(self._spec2, self.bias_q, self.m)
        cols = np.empty(lib.rc_lowrank_q8_cols_size(self.r, self.m), np.int32)
        signed = _native.aligned_empty(lib.rc_lowrank_q8_signed_size(self.n, self.r, self.m), np.uint8)
        pv, pu = ptr("void *", self.packed_v.packed), ptr("void *", self.packed_u.packed)
        check_rc(lib.rc_lowrank_q8_prepare(self.n, self.r, self.m, self.x_zero_point, self.h_zero_point,
                                           ptr("int32_t *", self.packed_v.col_sums),
                                           ptr("int32_t *", self.packed_u.col_sums), pv, pu,
                                           ptr("int32_t *", cols), ptr("void *", signed)),
                 "QuantizedLowRank")
        c_args = (pv, pu, ptr("int32_t *", cols), ptr("void *", signed), epi_h, epi_y)
        # written directly: the object may already be frozen (prepared lazily by a first call)
        for k, v in (("_cols", cols), ("_signed", signed), ("_keep", (keep_h, keep_y)), ("_c_args", c_args)):
            object.__setattr__(self, k, v)
        return c_args

    @classmethod
    def calibrate(cls, v, u, bias, x) -> "QuantizedLowRank":
        """Choose (s_x, z_x) and (s_h, z_h) from the min / max of float32 calibration inputs
        x [N, n] and their h = x v^T (ranges widened to include 0, uint8 affine)."""
        v, u, bias = _float_factors(v, u, bias)
        x = check_array(x, "x", dtypes=[np.float32], ndim=2, finite=True)
        if x.shape[0] == 0 or x.shape[1] != v.shape[1]:
            raise ShapeError(f"x: expected calibration inputs of shape (N >= 1, {v.shape[1]}) "
                             f"(n = v.shape[1]), got {x.shape}")
        sx, zx = _affine_u8(x)
        sh, zh = _affine_u8(x @ v.T)
        return cls(v, u, bias, sx, zx, sh, zh)

    def quantize_input(self, x) -> np.ndarray:
        """x_q = saturate(round_half_even(x / s_x) + z_x), uint8 (ONNX QuantizeLinear).
        (:func:`lowrank_linear_q8` given float x does this inside its call.)"""
        return quantize(x, self.x_scale, self.x_zero_point, dtype=np.uint8)

    def __repr__(self):
        return f"QuantizedLowRank(n={self.n}, r={self.r}, m={self.m})"


def _float_factors(v, u, bias):
    """The float factors the int8 layer quantizes: finite (a NaN row scale would become 1
    and its codes 0, silently), r >= 1 and n >= 1 (nothing to quantize otherwise)."""
    v = check_array(v, "v", dtypes=[np.float32], ndim=2, contiguous=True, finite=True)
    if v.shape[0] == 0 or v.shape[1] == 0:
        raise ShapeError(f"v: expected a rank r >= 1 and n >= 1 to quantize, got shape {v.shape}")
    u = check_array(u, "u", dtypes=[np.float32], ndim=2, contiguous=True, finite=True)
    if bias is not None:
        bias = check_array(bias, "bias", dtypes=[np.float32], ndim=1, contiguous=True, finite=True)
    return v, u, bias


def _affine_u8(a):
    lo, hi = min(float(np.min(a)), 0.0), max(float(np.max(a)), 0.0)
    scale = (hi - lo) / 255.0 if hi > lo else 1.0
    return scale, int(np.clip(round(-lo / scale), 0, 255))


def lowrank_linear_q8_reference(x_q, q):
    """NumPy definition: the two exact qgemm references composed (module docstring), after
    quantizing x with (s_x, z_x) when it is float32."""
    if x_q.dtype == _F32:
        x_q = quantize_reference(x_q, np.float32(q.x_scale), np.int32(q.x_zero_point), None, np.uint8, 0, 255)
    h_q = qgemm_reference(x_q, q.packed_v, q.x_zero_point, None, q._spec1)
    return qgemm_reference(h_q, q.packed_u, q.h_zero_point, q.bias_q, q._spec2)


def _lowrank_linear_q8_c(x_q, q, isa, threads):
    lib, fb = _native.lib, _native.ffi.from_buffer
    c_args = q._c_args or q._prepare_c()
    B = len(x_q)
    y = np.empty((B, q.m), _F32)
    last = q._ws_last  # (batch, workspace bytes) of the previous call: a layer mostly sees one batch
    if last[0] != B:
        last = (B, lib.rc_lowrank_q8_workspace_size(B, q.n, q.r))
        object.__setattr__(q, "_ws_last", last)
    ws = _native.workspace(last[1])
    if x_q.itemsize == 1:  # uint8 (by value: a dtype object equal to uint8 need not be _U8)
        rc = lib.rc_lowrank_q8(fb(_native.U8_ARRAY, x_q), B, q.n, q.r, q.m, *c_args, fb(_native.F32_ARRAY, y),
                               ws[2], isa, threads)
    else:
        rc = lib.rc_lowrank_q8_f32(fb(_native.F32_ARRAY, x_q), q.x_scale, q.x_zero_point, B, q.n, q.r, q.m,
                                   *c_args, fb(_native.F32_ARRAY, y), ws[2], isa, threads)
    if rc:
        check_rc(rc, "lowrank_linear_q8")
    return y


register(Op("lowrank_linear_q8", lowrank_linear_q8_reference, _lowrank_linear_q8_c,
            ("portable", "avx2", "avx512", "avx_vnni", "avx512_vnni"), doc=__doc__))


def lowrank_linear_q8(x_q, q: QuantizedLowRank) -> np.ndarray:
    """int8 factored Linear -> float32 y [B, m].  Bit-exact across NumPy and every C variant.

    x_q : uint8 [B, n], codes quantized with ``q.x_scale``, ``q.x_zero_point``; or float32
        [B, n], which the call quantizes with them first (:meth:`QuantizedLowRank.quantize_input`'s
        rule, inside the C call: no separate pass or call).
    """
    # check_array's checks inline for the usual case, as in lowrank_linear
    if not (type(q) is QuantizedLowRank and type(x_q) is np.ndarray and (x_q.dtype is _U8 or x_q.dtype is _F32)
            and x_q.ndim == 2 and x_q.shape[1] == q.n and x_q.flags.c_contiguous):
        if not isinstance(q, QuantizedLowRank):
            raise ArgumentError(f"q: expected a QuantizedLowRank, got {type(q).__name__}")
        x_q = check_array(x_q, "x_q", dtypes=[np.uint8, np.float32], ndim=2, contiguous=True)
        if x_q.shape[1] != q.n:
            raise ShapeError(f"x_q: expected shape (batch, {q.n}), got {x_q.shape}")
    impl, isa, threads = _registry.resolve_kept("lowrank_linear_q8")
    if isa is None or q.empty:
        return lowrank_linear_q8_reference(x_q, q)
    return impl(x_q, q, isa, threads)
