"""Attention transfer: spatial attention maps of CNNs and attention probabilities of
attention layers.

**Activation-based attention transfer** (Zagoruyko & Komodakis 2017, "Paying More Attention
to Attention", ICLR, arXiv:1612.03928).  A feature map A [N, C, H, W] is summarised by the
spatial attention map

    Q[n, h, w] = sum_c |A[n, c, h, w]|^p          (the paper's F^p_sum, p = 2 by default)

flattened to [N, H*W] and L2-normalised, q = Q / ||Q||_2.  Channel counts of student and
teacher may differ (the map sums them away); spatial sizes must match.  The loss at one
layer pair is

    AT = beta/2 * (1/N) sum_n || q_s,n - q_t,n ||_2                 (squared=False, eq. 2)
    AT = beta/2 * (1/N) sum_n || q_s,n - q_t,n ||_2^2               (squared=True)

The paper's equation uses the norm itself; the authors' code uses the squared difference
(averaged over positions, with beta = 1e3), which is smooth where student and teacher
agree.  The normalisation makes ``sum_c`` and the code's ``mean_c`` the same map.

**Attention-probability distillation** (MiniLM, Wang et al. 2020, arXiv:2002.10957; cf.
TinyBERT, Jiao et al. 2020, which matches the attention matrices by MSE instead): for
attention distributions P [batch, heads, q, k] (each row over k sums to 1),

    L = (1 / (B H Q)) sum_{b, h, i} KL(P_t[b, h, i, :] || P_s[b, h, i, :])
    dL / dP_s = -P_t / (B H Q P_s)
"""

from __future__ import annotations

import numpy as np

from .._validation import check_array, check_choice, check_float
from ..errors import ArgumentError, ShapeError
from ..nn.functional import FLOAT_DTYPES

__all__ = [
    "spatial_attention",
    "attention_transfer_loss",
    "attention_probability_loss",
]

# Below this norm the attention map is treated as all zero (a dead layer); dividing by eps
# instead of 0 keeps the loss finite and its gradient defined (as torch.nn.functional.normalize).
_NORM_EPS = 1e-12

_RESIZES = (None, "avgpool")


def _check_feature(x, name, dtype=None):
    return check_array(x, name, dtypes=FLOAT_DTYPES if dtype is None else (dtype,), ndim=4)


def _attention_raw(A, p):
    """Q = sum_c |A_c|^p as [N, H, W] (float64 to keep small maps from underflowing)."""
    a = np.abs(A.astype(np.float64, copy=False))
    return (a * a if p == 2.0 else a**p).sum(axis=1)


def _attention_raw_backward(A, p, gQ):
    """dL/dA from dL/dQ [N, H, W]:  dQ/dA_c = p |A_c|^(p-1) sign(A_c)."""
    a = A.astype(np.float64, copy=False)
    if p == 2.0:
        d = 2.0 * a
    elif p == 1.0:
        d = np.sign(a)
    else:
        d = p * np.abs(a) ** (p - 1.0) * np.sign(a)
    return gQ[:, None, :, :] * d


def _pool_factor(big, small, name):
    fh, fw = big[0] // small[0], big[1] // small[1]
    if fh * small[0] != big[0] or fw * small[1] != big[1]:
        raise ShapeError(
            f"{name}: resize='avgpool' needs spatial sizes that divide evenly, got "
            f"{tuple(big)} and {tuple(small)}")
    return fh, fw


def _avgpool(Q, f):
    N, H, W = Q.shape
    return Q.reshape(N, H // f[0], f[0], W // f[1], f[1]).mean(axis=(2, 4))


def _avgpool_backward(g, f):
    return np.repeat(np.repeat(g, f[0], axis=1), f[1], axis=2) / (f[0] * f[1])


def _normalize(Q):
    """q = Q / max(||Q||, eps) row-wise on [N, M]; returns q and the clamped norms."""
    nrm = np.maximum(np.linalg.norm(Q, axis=1, keepdims=True), _NORM_EPS)
    return Q / nrm, nrm


def _normalize_backward(q, nrm, g):
    # d(Q/||Q||)/dQ = (I - q q^T) / ||Q||; below eps the map is Q/eps, derivative I/eps.
    live = nrm > _NORM_EPS
    proj = g - q * np.sum(q * g, axis=1, keepdims=True)
    return np.where(live, proj, g) / nrm


def _check_p(p):
    # p < 1 makes |A|^p non-differentiable (infinite slope) at 0; the paper uses p = 2.
    return check_float(p, "p", min_value=1.0)


def spatial_attention(features, p: float = 2.0) -> np.ndarray:
    """The normalised spatial attention map q = vec(sum_c |A_c|^p) / ||.||_2.

    features : [N, C, H, W] float16/32/64.  Returns [N, H*W] float64 (each row has unit L2
    norm, or is zero for an all-zero feature map).  Zagoruyko & Komodakis 2017, eq. (1)-(2).
    """
    A = _check_feature(features, "features")
    if A.size == 0:
        raise ShapeError(f"features: expected a non-empty batch of non-empty maps, got shape {A.shape}")
    p = _check_p(p)
    Q = _attention_raw(A, p).reshape(A.shape[0], -1)
    return _normalize(Q)[0]


def attention_transfer_loss(student_features, teacher_features, *, p: float = 2.0,
                            beta: float = 1.0, squared: bool = False, resize=None):
    """Attention-transfer loss at one layer pair and its gradient w.r.t. the student map.

    student_features [N, C_s, H_s, W_s], teacher_features [N, C_t, H_t, W_t], floating
    (teacher in the student's dtype).  Channels may differ; spatial sizes must be equal
    unless ``resize="avgpool"``, which average-pools the larger *attention map* Q by the
    integer size ratio before normalising (exact and linear, so the gradient is exact).

        value = beta/2 * (1/N) sum_n ||q_s,n - q_t,n||_2      (or its square, ``squared``)

    Returns ``(value, grad)``: value a float, grad = d value / d student_features in the
    student's shape and dtype.  With ``squared=False`` the norm is not differentiable where
    q_s,n = q_t,n exactly; the subgradient 0 is used there.
    """
    S = _check_feature(student_features, "student_features")
    Tf = _check_feature(teacher_features, "teacher_features", S.dtype)
    if Tf.shape[0] != S.shape[0]:
        raise ShapeError(
            f"teacher_features: expected batch size {S.shape[0]} (as student_features), "
            f"got shape {Tf.shape}")
    if S.shape[0] == 0:
        raise ShapeError(f"student_features: expected a non-empty batch, got shape {S.shape}")
    for X, name in ((S, "student_features"), (Tf, "teacher_features")):
        if 0 in X.shape[2:]:
            raise ShapeError(f"{name}: expected non-empty spatial maps [N, C, H >= 1, W >= 1], got shape {X.shape}")
    p = _check_p(p)
    beta = check_float(beta, "beta", min_value=0.0)
    if not isinstance(squared, (bool, np.bool_)):
        raise ArgumentError(f"squared: expected a bool, got {type(squared).__name__}")
    check_choice(resize, "resize", _RESIZES)
    hs, ht = S.shape[2:], Tf.shape[2:]
    Qs, Qt = _attention_raw(S, p), _attention_raw(Tf, p)
    fs = ft = None
    if hs != ht:
        if resize is None:
            raise ShapeError(
                f"student_features: spatial size {tuple(hs)} differs from teacher_features "
                f"{tuple(ht)}; tap layers of equal resolution or pass resize='avgpool'")
        if hs[0] >= ht[0] and hs[1] >= ht[1]:
            fs = _pool_factor(hs, ht, "student_features")
            Qs = _avgpool(Qs, fs)
        elif hs[0] <= ht[0] and hs[1] <= ht[1]:
            ft = _pool_factor(ht, hs, "teacher_features")
            Qt = _avgpool(Qt, ft)
        else:
            raise ShapeError(
                f"student_features: spatial size {tuple(hs)} is neither larger nor smaller "
                f"than teacher_features {tuple(ht)} in both dimensions")
    N = S.shape[0]
    pooled_shape = Qs.shape
    qs, ns = _normalize(Qs.reshape(N, -1))
    qt, _ = _normalize(Qt.reshape(N, -1))
    d = qs - qt
    dn = np.linalg.norm(d, axis=1, keepdims=True)
    if squared:
        value = beta / 2.0 * float(np.sum(dn**2)) / N
        gq = beta / N * d
    else:
        value = beta / 2.0 * float(np.sum(dn)) / N
        gq = beta / (2.0 * N) * np.divide(d, dn, out=np.zeros_like(d), where=dn > 0)
    gQ = _normalize_backward(qs, ns, gq).reshape(pooled_shape)
    if fs is not None:
        gQ = _avgpool_backward(gQ, fs)
    grad = _attention_raw_backward(S, p, gQ)
    return value, grad.astype(S.dtype, copy=False)


def _row_sum_tolerance(dtype, k):
    # A softmax row sums to 1 up to about k roundings of its dtype; allow a generous multiple.
    return 64.0 * k * float(np.finfo(dtype).eps)


def attention_probability_loss(student_probs, teacher_probs):
    """Mean KL between teacher and student attention distributions (MiniLM).

    student_probs, teacher_probs : [batch, heads, q, k], same floating dtype, entries in
    [0, 1], each row over k summing to 1 (softmax outputs).  Returns ``(value, grad)``:

        value = (1 / (B H Q)) sum KL(P_t || P_s)   (terms with P_t = 0 count 0)
        grad  = d value / d student_probs = -P_t / (B H Q P_s)

    The gradient treats the entries of P_s as free variables; a caller whose P_s comes from
    scores through a softmax gets dL/dscores = P_s (g - sum_k P_s g) = (P_s - P_t)/(B H Q).
    Student zeros where the teacher is positive make the KL infinite and are refused.
    """
    Ps = check_array(student_probs, "student_probs", dtypes=FLOAT_DTYPES, ndim=4, finite=True)
    Pt = check_array(teacher_probs, "teacher_probs", dtypes=(Ps.dtype,), ndim=4, finite=True)
    if Pt.shape != Ps.shape:
        raise ShapeError(
            f"teacher_probs: expected shape {Ps.shape} (as student_probs: same batch, heads, "
            f"queries and keys), got {Pt.shape}")
    if Ps.size == 0:
        raise ShapeError(f"student_probs: expected a non-empty tensor, got shape {Ps.shape}")
    tol = _row_sum_tolerance(Ps.dtype, Ps.shape[-1])
    for P, name in ((Ps, "student_probs"), (Pt, "teacher_probs")):
        if P.min() < 0 or P.max() > 1:
            raise ArgumentError(f"{name}: expected probabilities in [0, 1], got values in "
                                f"[{P.min()}, {P.max()}]")
        err = float(np.max(np.abs(P.sum(axis=-1, dtype=np.float64) - 1.0)))
        if err > tol:
            raise ArgumentError(
                f"{name}: expected each row over the last axis (keys) to sum to 1, got a row "
                f"off by {err:.3g} (tolerance {tol:.3g})")
    support = Pt > 0
    if np.any(support & (Ps == 0)):
        raise ArgumentError(
            "student_probs: has exact zeros where teacher_probs is positive (the KL is "
            "infinite); compute it with a softmax, which never returns exact zeros for finite scores")
    M = Ps.shape[0] * Ps.shape[1] * Ps.shape[2]
    ps64, pt64 = Ps.astype(np.float64), Pt.astype(np.float64)
    safe_pt = np.where(support, pt64, 1.0)
    safe_ps = np.where(support, ps64, 1.0)
    value = float(np.sum(np.where(support, pt64 * (np.log(safe_pt) - np.log(safe_ps)), 0.0)) / M)
    grad = np.where(support, -pt64 / (M * safe_ps), 0.0)
    return value, grad.astype(Ps.dtype, copy=False)
