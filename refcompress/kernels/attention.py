"""Fused multi-head self-attention (inference): a NumPy reference and C kernels.

Scaled dot-product attention, Vaswani et al., "Attention Is All You Need" (2017), eq. 1,
per head h of width d = H / heads (heads interleaved as Hugging Face's BERT: head h is
columns h*d .. (h+1)*d - 1 of the [B, S, H] query / key / value projections):

    z[b, h, i, j] = scale * <q[b, i, h], k[b, j, h]> + mask[b, j]
    P[b, h, i, :] = softmax_j(z[b, h, i, :])
    ctx[b, i, h]  = sum_j P[b, h, i, j] v[b, j, h]

``mask`` is additive over the keys ([B, S]: 0 for tokens, a large negative number or -inf
for padding).  The softmax is :func:`refcompress.kernels.nnops.softmax`'s: max-subtracted,
a row whose z are all -inf (every key masked with -inf) gives P = 0 and so ctx = 0, a row
holding a NaN or a +inf gives NaN.  With the finite ``finfo.min`` mask of Hugging Face, a
fully padded row has every z equal to the mask (the score is absorbed) and P is uniform.

``attention`` is the public op: float32 runs the C kernel (portable, AVX-512; OpenMP over
(batch, head) pairs; csrc/attention/), which reads the strided head slices in place and
writes ctx in [B, S, H] -- no split / merge transposes -- and never stores P.  It forms
the scores as the unfused float32 graph does: fl(fl(q.k) * scale), then + mask (one float32
add each), so ``scale`` is rounded to float32 first.  float64 runs the reference under
every backend.  The kernel is held, element by element, to :func:`attention_error_bound`
against the reference evaluated in float64 on the same float32 inputs (docs/kernels.md).
"""

from __future__ import annotations

import math

import numpy as np

from .._validation import check_array, check_int
from ..errors import ArgumentError
from . import _native
from ._registry import Op, check_rc, dispatch, ops, register
from .nnops import EXP_REL_ERROR, U, U64, _EXP_MIN, _SECOND_ORDER, _TINY, _gamma

__all__ = ["attention", "attention_reference", "attention_error_bound", "attention_exact", "scores_may_overflow"]

_FLOATS = (np.float32, np.float64)


def _split(t, heads):
    """[B, S, H] -> [B, heads, S, d] (a view)."""
    B, S, H = t.shape
    return t.reshape(B, S, heads, H // heads).transpose(0, 2, 1, 3)


def _merge(t):
    """[B, heads, S, d] -> [B, S, H]."""
    B, h, S, d = t.shape
    return t.transpose(0, 2, 1, 3).reshape(B, S, h * d)


# ---- reference ------------------------------------------------------------------------------


def attention_reference(q, k, v, heads, scale, mask=None) -> np.ndarray:
    """NumPy definition (Vaswani et al. 2017, eq. 1) in float64, rounded to q's dtype:
    P = softmax(scale Q K^T + mask) per head (max-subtracted; all -inf rows give 0),
    ctx = merge(P V)."""
    Q, K, V = (_split(t.astype(np.float64), heads) for t in (q, k, v))
    with np.errstate(over="ignore", invalid="ignore"):
        z = float(scale) * np.matmul(Q, K.transpose(0, 1, 3, 2))
        if mask is not None:
            z = z + mask.astype(np.float64)[:, None, None, :]
        m = np.max(z, axis=-1, keepdims=True)
        full = m == -np.inf
        e = np.exp(z - np.where(full, 0.0, m))
        p = e / np.where(full, 1.0, np.sum(e, axis=-1, keepdims=True))
        ctx = np.matmul(p, V)
    return _merge(ctx).astype(q.dtype)


def attention_exact(q, k, v, heads, scale, mask=None) -> np.ndarray:
    """The reference evaluated in float64 on the (float32) inputs, with scale rounded to
    q's dtype as the public op does: what the kernels are compared with."""
    sc = float(np.asarray(scale, q.dtype))
    m = None if mask is None else np.asarray(mask).astype(np.float64)
    return attention_reference(q.astype(np.float64), k.astype(np.float64), v.astype(np.float64), heads, sc, m)


# ---- derived error bound of the C kernels -----------------------------------------------------


def attention_error_bound(q, k, v, heads, scale, mask=None) -> np.ndarray:
    """Element-wise bound on |attention_C - attention_exact| (float64, [B, S, H]).

    Per (b, h, i), with t_j = scale <q_i, k_j> and z_j = t_j + mask_j exact:

    * scores: the float32 dot product of length d, in any order, is within
      gamma_d sum_c |q_c||k_c| (+ d 2^-149 for underflow); times scale, one rounding:
      dt_j = |scale| (gamma_d sum|q||k| + d 2^-149) + u (|t_j| + that) + 2^-149;
    * + mask, one float32 rounding: min(u |z_j|, |t_j| + dt_j) (when the mask absorbs the
      score, e.g. finfo.min, the rounding error is the score itself); the float64
      reference's own z error is min(u64 |z_j|, |t_j|) + gamma64_{d+2} |scale| sum|q||k|.
      D_j is the sum: |z^_j - z_j| <= D_j.
    * softmax is shift-invariant, so perturbing z by at most D changes P_i by the factor
      e^{delta_i} / sum_k P_k e^{delta_k}: |dP_i| / P_i <= r_i = max(e^{D_i} / A_-  - 1,
      1 - e^{-D_i} / A_+), A_+- = sum_k P_k e^{+-D_k} (exact, not first order);
    * then the float32 softmax of nnops.softmax_error_bound on the kernel's z: relative
      2 EXP_REL_ERROR + u (|d_i| + D_i + A) + gamma_{S-1} + 2u + S 2^-125 + 2 (S + 4) u64,
      A = sum_k P_k (|d_k| + D_k), d = z - max z (one reciprocal and one product: the
      kernels scale the P V sum by 1/sum instead of each exp, the same two roundings),
      + 2^-125 absolute (flushed exp, subnormals);
    * P V: a float32 sum of S products, any order: gamma_S sum_j P^_j |v_j| (+ S 2^-149),
      plus the propagated sum_j |dP_j| |v_j|; the reference's float64 sum gamma64_S.

        |dctx| <= sum_j dP_j |v_j| + (gamma_S + gamma64_S) sum_j (P_j + dP_j) |v_j| + S 2^-149

    For unit-variance q, k, v at S = 116, d = 32, scale = 1/sqrt(d) this is about 650 u
    (4e-5) relative to sum_j P_j |v_j|: the score error (2 gamma_d |scale| sum|q||k|,
    ~290 u) and gamma_{S-1} + gamma_S (~230 u) dominate; scores of 1e4 give D ~ 1e-2 and a
    correspondingly wider bound.  Rows whose z are all -inf are exact (0); NaN rows must be NaN.

    Precondition: every float32 score the kernel forms is finite -- the dot product's
    partial sums, its product with scale and the sum with a finite mask do not overflow
    (:func:`scores_may_overflow` tests a sufficient condition).  Where one overflows (e.g.
    q, k of 1e20 and scale 1e-30: q.k ~ 1e40 is inf in float32, inf - inf is NaN) the
    float32 kernel gives NaN or inf where the float64 reference is finite, and no bound on
    the difference exists.
    """
    B, S, H = q.shape
    d = H // heads
    scale = float(np.asarray(scale, q.dtype))
    sc = abs(scale)
    Q, K, V = (_split(np.asarray(t, np.float64), heads) for t in (q, k, v))
    with np.errstate(all="ignore"):
        t = scale * np.matmul(Q, K.transpose(0, 1, 3, 2))
        sa = np.matmul(np.abs(Q), np.abs(K).transpose(0, 1, 3, 2))
        dt0 = sc * (_gamma(d) * sa + d * 2.0 ** -149)
        dt = dt0 + U * (np.abs(t) + dt0) + 2.0 ** -149
        D = dt + _gamma(d + 2, U64) * sc * sa
        if mask is None:
            z = t
        else:
            z = t + np.asarray(mask, np.float64)[:, None, None, :]
            D = D + np.minimum(U * (np.abs(z) + dt), np.abs(t) + dt) + np.minimum(U64 * np.abs(z), np.abs(t))
        m = np.max(z, axis=-1, keepdims=True)
        full = m == -np.inf
        dz = z - np.where(full, 0.0, m)
        e = np.exp(dz)
        p = e / np.where(full, 1.0, np.sum(e, axis=-1, keepdims=True))
        pos = p > 0
        a_plus = np.sum(np.where(pos, p * np.exp(D), 0.0), axis=-1, keepdims=True)
        a_minus = np.sum(np.where(pos, p * np.exp(-D), 0.0), axis=-1, keepdims=True)
        r_z = np.maximum(np.exp(D) / a_minus - 1.0, 1.0 - np.exp(-D) / a_plus)
        kept = dz >= _EXP_MIN * (1.0 + 2.0 * U) - D
        ad = np.where(kept, np.abs(dz) + D, 0.0)
        A = np.sum(np.where(pos, p * ad, 0.0), axis=-1, keepdims=True)
        r_sm = (2.0 * EXP_REL_ERROR + U * (ad + A) + _gamma(S - 1) + 2.0 * U + S * _TINY
                + 2.0 * (S + 4) * U64) * _SECOND_ORDER
        dp = np.where(pos, p * (r_z + (1.0 + r_z) * r_sm), 0.0) + _TINY
        av = np.abs(V)
        pv = np.matmul(p + dp, av)
        bound = np.matmul(dp, av) + (_gamma(S) + _gamma(S, U64)) * pv * _SECOND_ORDER + S * 2.0 ** -149
        bound = np.where(np.isnan(bound), np.inf, bound)
    return _merge(bound)


#: The smallest magnitude float32 rounding to nearest turns into inf: FLT_MAX + half its ulp.
_F32_OVERFLOW = 2.0**128 - 2.0**103


def scores_may_overflow(q, k, heads, scale, mask=None) -> np.ndarray:
    """Where :func:`attention_error_bound`'s precondition may fail: bool [B, heads, S, S],
    True for a (batch, head, query, key) whose float32 score could overflow -- the dot
    product's partial sums ((1 + gamma_d) sum_c |q_c||k_c|), the scaled score, or its sum
    with a finite mask reaching the float32 overflow threshold 2^128 - 2^103.  A sufficient
    test (False means the score is certainly finite; non-finite inputs are not flagged)."""
    d = q.shape[2] // heads
    sc = abs(float(np.asarray(scale, np.float32)))
    Q, K = (_split(np.asarray(t, np.float64), heads) for t in (q, k))
    with np.errstate(all="ignore"):
        dot = (1.0 + _gamma(d)) * np.matmul(np.abs(Q), np.abs(K).transpose(0, 1, 3, 2)) + d * 2.0 ** -149
        t = sc * dot * (1.0 + U) + 2.0 ** -149
        over = (dot >= _F32_OVERFLOW) | (t >= _F32_OVERFLOW)
        if mask is not None:
            m = np.abs(np.asarray(mask, np.float64))[:, None, None, :]
            over |= np.isfinite(m) & (t + m >= _F32_OVERFLOW)
    return over & np.isfinite(dot)


# ---- C implementation ---------------------------------------------------------------------------


def _attention_c(q, k, v, heads, scale, mask=None, *, isa, threads):
    B, S, H = q.shape
    ctx = np.empty(q.shape, np.float32)
    lib = _native.lib
    nbytes = lib.rc_attention_workspace_size(S, H, heads, threads)
    if nbytes < 0:
        raise RuntimeError("attention: C workspace size rejected validated arguments; this is a bug")
    ws = np.empty(max(int(nbytes), 1), np.uint8)
    mp = _native.ffi.NULL if mask is None else _native.ptr("float *", mask)
    check_rc(lib.rc_attention_f32(_native.ptr("float *", q), _native.ptr("float *", k), _native.ptr("float *", v),
                                  mp, float(scale), _native.ptr("float *", ctx), B, S, H, heads,
                                  _native.ptr("void *", ws), isa, threads), "attention")
    return ctx


register(Op("attention", attention_reference, _attention_c, ("portable", "avx512"), tolerance=U,
            tolerance_doc="element-wise attention_error_bound: gamma_d scores, shift-invariant softmax "
                          "perturbation, nnops softmax bound, gamma_S for P V (float64 reference-only)",
            doc=__doc__, extra={"error_bound": attention_error_bound}))


# ---- public entry point ---------------------------------------------------------------------------


def attention(q, k, v, heads, scale, mask=None) -> np.ndarray:
    """Multi-head scaled dot-product attention of [B, S, H] q, k, v -> ctx [B, S, H].

    q, k, v : float32 or float64 arrays of one shape [B, S, H] and dtype, heads interleaved
              (head h is columns h*d .. (h+1)*d - 1, d = H / heads).
    heads   : a positive int dividing H.
    scale   : finite float multiplying the scores (1 / sqrt(d) for BERT); rounded to q's
              dtype first.
    mask    : None or an additive [B, S] array of q's dtype over the keys (0 = token, a large
              negative number or -inf = padding).
    ctx[b, i, h] = sum_j softmax_j(scale <q[b,i,h], k[b,j,h]> + mask[b,j]) v[b, j, h].
    float32 runs the C kernel (within :func:`attention_error_bound` of the reference);
    float64 runs the reference.  A query whose keys are all -inf gives 0.
    """
    q = check_array(q, "q", dtypes=_FLOATS, ndim=3, contiguous=True)
    k = check_array(k, "k", dtypes=(q.dtype,), shape=q.shape, contiguous=True)
    v = check_array(v, "v", dtypes=(q.dtype,), shape=q.shape, contiguous=True)
    B, S, H = q.shape
    heads = check_int(heads, "heads", min_value=1)
    if H % heads:
        raise ArgumentError(f"heads: expected a divisor of q's last dimension {H}, got {heads}")
    if isinstance(scale, bool) or not isinstance(scale, (int, float, np.floating, np.integer)) \
            or not math.isfinite(float(scale)):
        raise ArgumentError(f"scale: expected a finite number, got {scale!r}")
    with np.errstate(over="ignore"):
        scale = float(np.asarray(scale, q.dtype))
    if not math.isfinite(scale):
        raise ArgumentError(f"scale: expected a number finite in {q.dtype.name}, got {scale!r}")
    if mask is not None:
        mask = check_array(mask, "mask", dtypes=(q.dtype,), shape=(B, S), contiguous=True)
    if B == 0 or S == 0 or H == 0:  # nothing to compute (H = 0: heads of width 0, any heads)
        return np.empty(q.shape, q.dtype)
    if q.dtype == np.float32:
        return dispatch("attention", q, k, v, heads, scale, mask)
    return ops()["attention"].reference(q, k, v, heads, scale, mask)
