"""Float32 transformer ops: GELU (erf form), LayerNorm (optionally of x + residual) and
softmax with an additive mask, each a NumPy reference plus C kernels.

The references are the definitions: written in float64 internally and rounded once to the
input's dtype, so the only error of a reference is its formula's (erf, below) and that
last rounding.  ``gelu``, ``layer_norm`` and ``softmax`` are the public ops: float32 runs
the C kernels (portable, AVX2, AVX-512; OpenMP over rows; csrc/nnops/), float64 runs the
reference under every backend (the C kernels are float32 only).

* ``erf``: Abramowitz & Stegun, *Handbook of Mathematical Functions* (1964), eq. 7.1.26,

      erf(x) = 1 - (a1 t + a2 t^2 + a3 t^3 + a4 t^4 + a5 t^5) exp(-x^2),   t = 1 / (1 + p x),

  for x >= 0 and erf(-x) = -erf(x); absolute error <= 1.5e-7 for every x, about one float32
  ulp at 1 (NumPy has no erf, and the library does not depend on SciPy).
* ``gelu``: the exact (erf) form of Hendrycks & Gimpel, "Gaussian Error Linear Units"
  (2016): GELU(x) = x * Phi(x) = x/2 * (1 + erf(x / sqrt 2)).  Its error is
  |x|/2 * 1.5e-7, below float32 resolution of the result for every |x|.
* ``layer_norm``: Ba, Kiros & Hinton, "Layer Normalization" (2016), eq. (4) with an affine
  output: y = (s - mean) / sqrt(var + eps) * gamma + beta over the last axis, ``var`` the
  biased (population) variance, as BERT and PyTorch's LayerNorm compute it; s = x, or
  s = x + residual formed in x's dtype (BERT's LayerNorm(h + sublayer(h)), one op).
* ``softmax``: softmax(z)_k = exp(z_k - m) / sum_j exp(z_j - m), m = max_j z_j, over the
  last axis, z = x + mask formed in x's dtype (the additive attention mask, broadcast over
  rows: scores [B, heads, Tq, Tk] + mask [B, 1, 1, Tk]).  A row whose z are all -inf
  (fully masked) gives zeros, not 0/0; a row holding a NaN or a +inf gives NaN throughout.

How close the C kernels are (float32, u = 2^-24): each kernel is held, element by element,
to a bound derived from its operation sequence (``gelu_error_bound``,
``layer_norm_error_bound``, ``softmax_error_bound``; derivations in docs/kernels.md)
against the reference evaluated in float64 on the same float32 inputs.
"""

from __future__ import annotations

import math

import numpy as np

from .._validation import check_array
from ..errors import ArgumentError, ShapeError
from . import _native
from ._registry import Op, check_rc, dispatch, ops, register

__all__ = ["erf", "gelu", "layer_norm", "softmax", "ERF_ABS_ERROR", "EXP_REL_ERROR",
           "gelu_reference", "layer_norm_reference", "softmax_reference",
           "gelu_error_bound", "layer_norm_error_bound", "softmax_error_bound"]

#: Largest absolute error of :func:`erf` (A&S 7.1.26) before the final rounding.
ERF_ABS_ERROR = 1.5e-7

_P = 0.3275911
_A = (0.254829592, -0.284496736, 1.421413741, -1.453152027, 1.061405429)
_FLOATS = (np.float32, np.float64)


# ---- references ----------------------------------------------------------------------------


def erf(x) -> np.ndarray:
    """erf(x) by A&S 7.1.26 (|error| <= 1.5e-7); float32 / float64 in, same dtype out."""
    x = check_array(x, "x", dtypes=_FLOATS)
    a = np.abs(x.astype(np.float64))
    t = 1.0 / (1.0 + _P * a)
    poly = t * (_A[0] + t * (_A[1] + t * (_A[2] + t * (_A[3] + t * _A[4]))))
    y = 1.0 - poly * np.exp(-a * a)
    return np.copysign(y, x).astype(x.dtype)


def gelu_reference(x) -> np.ndarray:
    """NumPy definition: GELU(x) = x/2 * (1 + erf(x / sqrt 2)) in float64, rounded to x's dtype."""
    x64 = x.astype(np.float64)
    with np.errstate(invalid="ignore"):  # gelu(-inf) = -inf * 0 = NaN, as the formula says
        return (0.5 * x64 * (1.0 + erf(x64 * np.sqrt(0.5)))).astype(x.dtype)


def layer_norm_reference(x, weight, bias, eps, residual=None) -> np.ndarray:
    """NumPy definition: s = x (+ residual, in x's dtype); (s - mean) / sqrt(var + eps) *
    weight + bias over the last axis in float64, rounded to x's dtype."""
    s = x if residual is None else x + residual
    x64 = s.astype(np.float64)
    mean = x64.mean(axis=-1, keepdims=True)
    d = x64 - mean
    var = np.mean(d * d, axis=-1, keepdims=True)
    y = d / np.sqrt(var + float(eps)) * weight.astype(np.float64) + bias.astype(np.float64)
    return y.astype(x.dtype)


def softmax_reference(x, mask=None) -> np.ndarray:
    """NumPy definition: z = x (+ mask, in x's dtype); exp(z - max z) / sum over the last
    axis in float64, rounded to x's dtype; all -inf rows give zeros, NaN / +inf rows NaN."""
    with np.errstate(over="ignore", invalid="ignore"):  # inf + -inf = NaN: a NaN row
        z = x if mask is None else x + mask
    z64 = z.astype(np.float64)
    m = np.max(z64, axis=-1, keepdims=True)
    full = m == -np.inf  # fully masked: every z is -inf
    with np.errstate(invalid="ignore"):
        e = np.exp(z64 - np.where(full, 0.0, m))
        s = np.sum(e, axis=-1, keepdims=True)
        p = e / np.where(full, 1.0, s)
    return p.astype(x.dtype)


# ---- derived error bounds of the C kernels ------------------------------------------------------

U = 2.0 ** -24   # float32 unit roundoff
U64 = 2.0 ** -53  # float64 unit roundoff
_TINY = 2.0 ** -125  # > exp(-87): what flushing exp below RC_EXP_MIN can lose; also >= 4 * 2^-127
_SECOND_ORDER = 1.0 + 2.0 ** -10  # the bounds are first order in u; O(u^2) terms are < 2^-10 of them


def _f32(v) -> float:
    return float(np.float32(v))


def _gamma(k, unit=U):
    k = np.asarray(k, np.float64)
    return k * unit / (1.0 - k * unit)


# The float32 constants of csrc/nnops/nnops.h, as the C literals round them.
_EXP_MIN = -87.0
_LOG2E = _f32(1.44269504)
_EXP_C1 = 0.693359375
_EXP_C2 = _f32(-2.12194440e-4)
_EXP_P = (1.0, 1.0, 0.5, _f32(0.166666667), _f32(0.0416666667), _f32(0.00833333333),
          _f32(0.00138888889), _f32(0.000198412698))


def _exp_error_bound() -> float:
    """Relative error bound of the kernels' exp(d + dlo) for -87 <= d <= 0 (not flushed).

    k = rint(fl(d log2e)) leaves |r| = |d - k ln2| <= ln2 (1/2 + 87 (|log2e_f32 - log2e| +
    u log2e)) = r_max.  Reduction (two roundings for each a*b + c): k C1 is exact (C1 has
    9 bits, |k| <= 126); d - k C1, k C2, r1 - k C2 and + dlo each round once; the split
    C1 + C2 misses ln2 by |ln2 - C1 - C2| per unit of k.  Polynomial: the Taylor remainder
    r^8/8! e^|r| relative to e^r; float32 coefficients; Horner's running error
    u sum_k R^k (R S_{k+1} + S_k), S_k = sum_{i>=k} |c_i| R^(i-k), over e^-R.  Scaling by
    2^k is exact (k >= -126 keeps the result normal)."""
    kmax = 126.0
    ln2 = math.log(2.0)
    r_max = ln2 * (0.5 + 87.0 * (abs(_LOG2E - 1.0 / ln2) + U * _LOG2E))
    r1 = r_max + kmax * abs(_EXP_C2)          # |d - k C1| before k C2 comes off
    dr = U * (r1 + kmax * abs(_EXP_C2) + 2.0 * (r_max + 87.0 * U)) + kmax * abs(ln2 - _EXP_C1 - _EXP_C2)
    R = r_max + dr + 87.0 * U                 # |argument| of the polynomial (dlo <= 87 u)
    trunc = R ** 8 / math.factorial(8) * math.exp(2.0 * R)
    coef = sum(abs(_EXP_P[k] - 1.0 / math.factorial(k)) * R ** k for k in range(8)) * math.exp(R)
    S = [sum(abs(_EXP_P[i]) * R ** (i - k) for i in range(k, 8)) for k in range(8)]
    horner = U * sum(R ** k * (R * S[k + 1] + S[k]) for k in range(7)) * math.exp(R)
    return trunc + coef + horner + math.expm1(dr)


#: Relative error bound of the C kernels' exp on [-87, 0] (about 4.7 u = 2.8e-7).
EXP_REL_ERROR = _exp_error_bound()


def gelu_error_bound(x) -> np.ndarray:
    """Element-wise bound on |gelu_C(x) - GELU_ref(x)| (float64, x's shape), GELU_ref the
    reference's formula evaluated in float64.

    With a = |x|/sqrt2, t = 1/(1 + p a), P(t) = A&S's polynomial, E = exp(-x^2/2) and
    q = P E (= 1 + erf(x/sqrt2) for x < 0, 1 - erf(|x|/sqrt2) for x >= 0), the kernel
    computes g = (x/2) q for x < 0 and (x/2)(2 - q) otherwise -- the reference's formula
    with no cancellation -- in float32, so its error is the rounding of each step:

    * t: 1/sqrt2 and p rounded to float32, a*(1/sqrt2), p*a, +1, 1/(...): relative
      dt <= 4u pa/(1 + pa) + 2u;
    * P(t): float32 coefficients (u |A_k| t^k), Horner's running error (two roundings a
      step), and |t P'(t)| dt;
    * E: x^2 = hi + lo exactly (Dekker / FMA), so only exp's own EXP_REL_ERROR; E is
      flushed to 0 when x^2/2 > 87, losing at most |x|/2 exp(-87) < |x| 2^-126;
    * q = P E: + u; then 2 - q (+ u (2 - q)) and the product with x/2 (+ u |g|, and
      2^-149 when x/2 or g is subnormal).
    The float64 reference itself may be off by |x|/2 2^-48 (its 1 - q and 1 + erf
    roundings, 3 2^-53, and q's float64 error, < 30 2^-53).
    """
    x64 = np.asarray(x, np.float64)
    with np.errstate(all="ignore"):
        ax = np.abs(x64)
        a = ax * np.sqrt(0.5)
        pa = _P * a
        t = 1.0 / (1.0 + pa)
        dt = 4.0 * U * pa / (1.0 + pa) + 2.0 * U
        # Horner's running error; the u |A_k| terms are the float32 coefficients
        s = _A[4] + 0.0 * t
        err = U * abs(_A[4]) + 0.0 * t
        dpdt = 5.0 * _A[4] * t ** 4
        for k in (3, 2, 1, 0):  # s_k = A_k + t s_{k+1}: a rounded product and a rounded sum
            s_new = _A[k] + t * s
            err = t * err + U * abs(_A[k]) + U * t * np.abs(s) + U * np.abs(s_new)
            s = s_new
            dpdt = dpdt + (k + 1) * _A[k] * t ** k
        P = t * s
        dP = t * err + U * np.abs(P) + np.abs(dpdt) * t * dt
        E = np.exp(-0.5 * x64 * x64)
        q = P * E
        eq = dP / P + EXP_REL_ERROR + U
        g = np.where(x64 < 0, 0.5 * x64 * q, 0.5 * x64 * (2.0 - q))
        pos = 0.5 * ax * (q * eq + U * (2.0 - q)) + U * np.abs(g)
        neg = np.abs(g) * (eq + U)
        bound = np.where(x64 < 0, neg, pos) + ax * _TINY + 2.0 ** -149 + 0.5 * ax * 2.0 ** -48
    return bound * _SECOND_ORDER


def layer_norm_error_bound(x, weight, bias, eps, residual=None) -> np.ndarray:
    """Element-wise bound on |layer_norm_C - LN_ref| (float64, x's shape), LN_ref the
    reference evaluated in float64 on s = x (+ residual, formed in float32).

    The kernel accumulates mean and the two-pass variance in double (so H, the row length,
    enters only through float64's gamma_H), then normalizes in float32:

    * mean: |dmu| <= gamma64_H mean|s|; var (two-pass, double): relative gamma64_{H+3}
      plus dmu^2 (sum (s - mu^)^2 = sum (s - mu)^2 + H dmu^2); inv = 1/sqrt(var + eps) in
      double, rounded to float32: e_inv <= (gamma64_{H+3} var + dmu^2) / (2 (var + eps))
      + 3 u64 + u;
    * d = (s - mu_hi) - mu_lo in float32 with mu = mu_hi + mu_lo (two floats):
      |dd| <= 2u |d| + 2u^2 |mu| + dmu (+ 2^-149 for subnormal d);
    * n = d * inv: |dn| <= |n| (e_inv + u) + inv |dd|; y = n w + b: + u |n w| + u |y|
      (+ 2^-148 subnormal).
    The float64 reference adds at most |w| inv dmu + |n w| (gamma64_{H+3}/2 + 4 u64)
    + 4 u64 (|n w| + |b|).  Rows outside the float32 fast path's limits (|s| > 2^100, or
    1/sqrt(var + eps) outside [2^-100, 2^100]) are computed in double, within the same bound.
    """
    s = np.asarray(x if residual is None else x + residual).astype(np.float64)
    w = np.asarray(weight, np.float64)
    b = np.asarray(bias, np.float64)
    H = s.shape[-1]
    with np.errstate(all="ignore"):
        mu = s.mean(-1, keepdims=True)
        d = s - mu
        var = np.mean(d * d, axis=-1, keepdims=True)
        inv = 1.0 / np.sqrt(var + float(eps))
        n = d * inv
        y = n * w + b
        dmu = _gamma(H + 1, U64) * np.mean(np.abs(s), axis=-1, keepdims=True)
        g3 = _gamma(H + 3, U64)
        e_inv = (g3 * var + dmu * dmu) / (2.0 * (var + float(eps))) + 3.0 * U64 + U
        dd = 2.0 * U * np.abs(d) + 2.0 * U * U * np.abs(mu) + dmu + 2.0 ** -149
        dn = np.abs(n) * (e_inv + U) + inv * dd
        nw = np.abs(n * w)
        bound = (np.abs(w) * dn + U * nw + U * np.abs(y) + 2.0 ** -148
                 + np.abs(w) * inv * dmu + nw * (g3 / 2 + 4 * U64) + 4 * U64 * (nw + np.abs(b)))
    return bound * _SECOND_ORDER


def softmax_error_bound(x, mask=None) -> np.ndarray:
    """Element-wise bound on |softmax_C - softmax_ref| (float64, x's shape), softmax_ref the
    reference evaluated in float64 on z = x (+ mask, formed in float32).

    With d_j = z_j - m <= 0 and p_j the exact result, the kernel computes
    fl(z_j - m) (relative u, so exp changes by u |d_j|), exp by the polynomial
    (EXP_REL_ERROR; flushed to 0 below -87, losing < 2^-125 / S per term), the float32 sum
    S (gamma_{n-1} in any order: every term is positive), one reciprocal and one product
    (2u).  Hence, first order,

        |p^_j - p_j| <= p_j (2 EXP_REL_ERROR + u (|d_j| + A) + gamma_{n-1} + 2u
                             + n 2^-125 + 2 (n + 4) u64) + 2^-125,

    A = sum_k p_k |d_k| over the terms not flushed (the exp error of the sum).  The
    absolute 2^-125 covers flushed terms and subnormal results; 2 (n + 4) u64 the float64
    reference's own error.
    """
    z = np.asarray(x if mask is None else x + mask).astype(np.float64)
    n = z.shape[-1]
    with np.errstate(all="ignore"):
        m = np.max(z, axis=-1, keepdims=True)
        full = m == -np.inf
        d = z - np.where(full, 0.0, m)
        e = np.exp(d)
        p = e / np.where(full, 1.0, np.sum(e, axis=-1, keepdims=True))
        kept = d >= _EXP_MIN * (1.0 + 2.0 * U)
        A = np.sum(np.where(kept, p * np.abs(d), 0.0), axis=-1, keepdims=True)
        rel = (2.0 * EXP_REL_ERROR + U * (np.where(kept, np.abs(d), 0.0) + A) + _gamma(n - 1) + 2.0 * U
               + n * _TINY + 2.0 * (n + 4) * U64)
        bound = np.where(np.isfinite(p), p * rel, 0.0) * _SECOND_ORDER + _TINY
    return bound


# ---- C implementations ------------------------------------------------------------------------


def _gelu_c(x, *, isa, threads):
    y = np.empty(x.shape, np.float32)
    if x.size:
        check_rc(_native.lib.rc_gelu_f32(_native.ptr("float *", x), _native.ptr("float *", y), x.size,
                                         isa, threads), "gelu")
    return y


def _layer_norm_c(x, weight, bias, eps, residual=None, *, isa, threads):
    y = np.empty(x.shape, np.float32)
    h = x.shape[-1]
    rows = x.size // h
    if rows:
        res = _native.ffi.NULL if residual is None else _native.ptr("float *", residual)
        check_rc(_native.lib.rc_layer_norm_f32(
            _native.ptr("float *", x), res, _native.ptr("float *", weight), _native.ptr("float *", bias),
            float(eps), _native.ptr("float *", y), rows, h, isa, threads), "layer_norm")
    return y


def _mask_rows(x_shape, mask):
    """(mask as contiguous [mask_rows, n], mask_rows, mask_div) such that row r of x (viewed
    as [rows, n]) adds mask row (r // mask_div) % mask_rows.  That is exact when the
    mask's non-broadcast leading axes are consecutive ([B,1,1,Tk], [1,1,Tq,Tk], [Tk], ...);
    any other pattern (e.g. [B,1,Tq,Tk]) is expanded to x's shape first."""
    lead = x_shape[:-1]
    mlead = (1,) * (len(lead) - (mask.ndim - 1)) + mask.shape[:-1]
    own = [i for i, m in enumerate(mlead) if m != 1]
    if own and own != list(range(own[0], own[-1] + 1)):
        full = np.ascontiguousarray(np.broadcast_to(mask, x_shape))
        rows = int(np.prod(lead, dtype=np.int64))
        return full.reshape(rows, x_shape[-1]), max(rows, 1), 1
    i0, i1 = (own[0], own[-1] + 1) if own else (len(lead), len(lead))
    mrows = int(np.prod(lead[i0:i1], dtype=np.int64))
    div = int(np.prod(lead[i1:], dtype=np.int64))
    return np.ascontiguousarray(mask).reshape(mrows, x_shape[-1]), max(mrows, 1), max(div, 1)


def _softmax_c(x, mask=None, *, isa, threads):
    y = np.empty(x.shape, np.float32)
    n = x.shape[-1]
    rows = x.size // n
    if not rows:
        return y
    if mask is None:
        mp, mrows, div = _native.ffi.NULL, 1, 1
    else:
        m2, mrows, div = _mask_rows(x.shape, mask)
        mp = _native.ptr("float *", m2)
    check_rc(_native.lib.rc_softmax_f32(_native.ptr("float *", x), mp, mrows, div,
                                        _native.ptr("float *", y), rows, n, isa, threads), "softmax")
    return y


_VARIANTS = ("portable", "avx2", "avx512")
register(Op("gelu", gelu_reference, _gelu_c, _VARIANTS, tolerance=U,
            tolerance_doc="element-wise gelu_error_bound(x): float32 rounding of each step of the "
                          "A&S formula + EXP_REL_ERROR (float64 reference-only)", doc=__doc__,
            extra={"error_bound": gelu_error_bound}))
register(Op("layer_norm", layer_norm_reference, _layer_norm_c, _VARIANTS, tolerance=U,
            tolerance_doc="element-wise layer_norm_error_bound: u|y| + |w|(|n|(e_inv + u) + inv|dd|) + "
                          "u|n w|, mean/var in double (float64 reference-only)", doc=__doc__,
            extra={"error_bound": layer_norm_error_bound}))
register(Op("softmax", softmax_reference, _softmax_c, _VARIANTS, tolerance=U,
            tolerance_doc="element-wise softmax_error_bound: p (2 eps_exp + u(|d| + A) + gamma_{n-1} + 2u)"
                          " + 2^-125 (float64 reference-only)", doc=__doc__,
            extra={"error_bound": softmax_error_bound}))


# ---- public entry points -----------------------------------------------------------------------


def _run(op_name, x, *args, **kwargs):
    """float32 through the registry (C or NumPy by the setting); float64 is the reference's."""
    if x.dtype == np.float32:
        return dispatch(op_name, x, *args, **kwargs)
    return ops()[op_name].reference(x, *args, **kwargs)


def gelu(x) -> np.ndarray:
    """GELU(x) = x/2 * (1 + erf(x / sqrt 2)) element-wise (erf by A&S 7.1.26).

    x : ndarray of float32 or float64, any shape.  Returns a new array of x's shape and
    dtype.  float32 runs the C kernel (polynomial exp, no libm call per element), within
    :func:`gelu_error_bound` of the reference; float64 runs the reference.  gelu(+inf) =
    +inf; gelu(-inf) and gelu(NaN) are NaN, as in the reference.
    """
    x = check_array(x, "x", dtypes=_FLOATS)
    # ascontiguousarray turns a 0-d array into shape (1,): keep the caller's shape
    return _run("gelu", np.ascontiguousarray(x).reshape(x.shape))


def layer_norm(x, weight, bias, eps: float = 1e-12, *, residual=None) -> np.ndarray:
    """LayerNorm over the last axis: (s - mean) / sqrt(var + eps) * weight + bias, s = x or
    s = x + residual (BERT's LayerNorm(h + sublayer(h)) in one pass).

    x [..., H] float32 / float64; weight, bias [H] of the same dtype; eps > 0 (finite);
    residual: None or an array of x's shape and dtype, added in that dtype first.
    Returns an array of x's shape and dtype.  float32 runs the C kernel (mean and variance
    accumulated in double), within :func:`layer_norm_error_bound` of the reference; float64
    runs the reference.
    """
    x = check_array(x, "x", dtypes=_FLOATS, min_ndim=1, contiguous=True)
    h = x.shape[-1]
    weight = check_array(weight, "weight", dtypes=(x.dtype,), shape=(h,), contiguous=True)
    bias = check_array(bias, "bias", dtypes=(x.dtype,), shape=(h,), contiguous=True)
    if isinstance(eps, bool) or not (isinstance(eps, (int, float, np.floating)) and math.isfinite(eps)
                                     and eps > 0):
        raise ArgumentError(f"eps: expected a finite positive number, got {eps!r}")
    if h == 0:
        raise ShapeError("x: expected a non-empty last axis")
    if residual is not None:
        residual = check_array(residual, "residual", dtypes=(x.dtype,), shape=x.shape, contiguous=True)
    return _run("layer_norm", x, weight, bias, float(eps), residual=residual)


def softmax(x, mask=None) -> np.ndarray:
    """softmax over the last axis of z = x + mask: exp(z - max z) / sum exp(z - max z).

    x [..., n] float32 / float64 (n >= 1).  mask: None, or an additive mask of x's dtype
    whose shape broadcasts to x's with the same last axis n (attention: scores
    [B, heads, Tq, Tk] with mask [B, 1, 1, Tk]); use 0 to keep and -inf (or a large
    negative number) to drop.  z is formed in x's dtype.  Rows with every z = -inf give
    zeros; rows holding a NaN or a +inf give NaN.  float32 runs the C kernel, within
    :func:`softmax_error_bound` of the reference; float64 runs the reference.
    """
    x = check_array(x, "x", dtypes=_FLOATS, min_ndim=1, contiguous=True)
    if x.shape[-1] == 0:
        raise ShapeError("x: expected a non-empty last axis")
    if mask is not None:
        mask = check_array(mask, "mask", dtypes=(x.dtype,), min_ndim=1)
        ok = mask.ndim <= x.ndim and mask.shape[-1] == x.shape[-1] and all(
            m in (1, s) for m, s in zip(mask.shape[::-1], x.shape[::-1]))
        if not ok:
            raise ShapeError(f"mask: expected a shape that broadcasts to x's {x.shape} with the same "
                             f"last axis {x.shape[-1]}, got {mask.shape}")
    return _run("softmax", x, mask)
