"""Randomized Hadamard rotation of a Linear layer's input space (incoherence processing).

Chee, Cai, Kuleshov & De Sa, "QuIP: 2-Bit Quantization of Large Language Models With
Guarantees", NeurIPS 2023 (incoherence processing); Tseng et al., "QuIP#", ICML 2024 and
Ashkboos et al., "QuaRot: Outlier-Free 4-Bit Inference in Rotated LLMs", NeurIPS 2024
(the randomized Hadamard transform as the rotation).

For any orthogonal Q [n, n], a Linear layer's output is unchanged when its input and its
weight's input axis are both rotated (row-vector convention, x [.., n], W [out, n]):

    y = x W^T = (x Q) (W Q)^T ,        Q Q^T = I.

Quantizing W Q instead of W helps when a row of W has a few huge entries (BERT's
output.dense holds weights at 175 sigma): a per-row scale must cover the largest |W_ij|,
so the other entries get few levels.  A rotation spreads each row's energy over all n
inputs, so max_j |(W Q)_ij| approaches ||W_i||_2 sqrt(2 ln n / n) -- the row is
"incoherent" -- and the same scale resolves it much more finely.

The rotation used here is Q = diag(d) H / sqrt(n), with d a vector of random signs and H a
Hadamard matrix (entries +-1, H H^T = n I):

* H = H_m (x) H_p, p = 2^k (Sylvester: H_2p = [[H_p, H_p], [H_p, -H_p]]) and m = 1 or
  m = q + 1 for a prime q = 3 (mod 4) (Paley's first construction); 384 = 12 * 32 and
  1536 = 12 * 128 are of this form.
* x Q costs n (m + a + b + ...) operations per row, with p = a b ... split into powers of
  two <= 128 (one small matrix product per Kronecker factor), not n^2: for
  n = 1536 = 12 * 128 that is 140 n.  A layer that dequantizes its weight anyway can
  instead turn the dequantized weight back once, W_hat Q^T (``inverse=True``), and run the
  float product unchanged (WeightOnlyLinear(rotate=True) does).
"""

from __future__ import annotations

import numpy as np

from .._validation import check_array, check_int
from ..errors import ArgumentError, ShapeError
from ..nn.functional import FLOAT_DTYPES

__all__ = ["hadamard_order", "hadamard_matrix", "random_signs", "hadamard_rotate"]


def _is_prime(q: int) -> bool:
    return q >= 2 and all(q % f for f in range(2, int(q**0.5) + 1))


def hadamard_order(n) -> tuple:
    """(m, p) with n = m p, p = 2^k the largest such power of two and m = 1 or m - 1 a
    prime = 3 (mod 4): the factors of the Hadamard matrix :func:`hadamard_matrix` builds.
    Raises ArgumentError when n has no such factorization."""
    n = check_int(n, "n", min_value=1)
    p = n & -n  # the largest power of two dividing n
    while p >= 1:
        m = n // p
        if m == 1 or (_is_prime(m - 1) and (m - 1) % 4 == 3):
            return m, p
        p //= 2
    raise ArgumentError(f"n: no Hadamard matrix of order {n} from these constructions; expected "
                        f"n = m * 2^k with m = 1 or m - 1 a prime = 3 (mod 4) (e.g. 2^k, 12 * 2^k, 20 * 2^k)")


def _paley(m: int) -> np.ndarray:
    """Paley I: H = I + S, S = [[0, 1^T], [-1, J]] with J[i, j] = chi(j - i) mod q = m - 1."""
    q = m - 1
    squares = {(i * i) % q for i in range(1, q)}
    chi = np.array([0] + [1 if r in squares else -1 for r in range(1, q)], np.int64)
    idx = np.arange(q)
    s = np.zeros((m, m), np.int64)
    s[0, 1:] = 1
    s[1:, 0] = -1
    s[1:, 1:] = chi[(idx[None, :] - idx[:, None]) % q]
    return np.eye(m, dtype=np.int64) + s


def hadamard_matrix(n) -> np.ndarray:
    """The Hadamard matrix H_m (x) H_p of order n (int64 [n, n], entries +-1, H H^T = n I);
    the reference the fast transform is checked against."""
    m, p = hadamard_order(n)
    return np.kron(_factor(m), _factor(p))


def random_signs(n, seed=0) -> np.ndarray:
    """n random signs (int8 +-1) from ``seed``: the d of Q = diag(d) H / sqrt(n)."""
    n = check_int(n, "n", min_value=1)
    return np.where(np.random.default_rng(seed).random(n) < 0.5, -1, 1).astype(np.int8)


def hadamard_rotate(x, signs, *, inverse=False) -> np.ndarray:
    """x Q along the last axis, Q = diag(signs) H / sqrt(n), H = :func:`hadamard_matrix`;
    with ``inverse=True``, x Q^T = (x H^T / sqrt(n)) diag(signs), which undoes it.

    x     : float [..., n] (inputs, or a weight [out, n] to rotate its input axis);
    signs : +-1 [n] (:func:`random_signs`).
    Returns an array of x's dtype and shape.  Q is orthogonal, so the rotation keeps norms
    and inner products; applied to a layer's input and to its weight, it keeps the output.
    """
    x = check_array(x, "x", dtypes=FLOAT_DTYPES)
    if x.ndim < 1:
        raise ShapeError("x: expected at least 1 dimension (the rotated axis last)")
    n = x.shape[-1]
    d = check_array(signs, "signs", ndim=1)
    if d.shape[0] != n or not np.all(np.abs(d) == 1):
        raise ArgumentError(f"signs: expected {n} values of +1 or -1 (one per input feature), got {d.shape}")
    m, p = hadamard_order(n)
    # H = H_m (x) H_a (x) H_b ..., the Sylvester factor split into powers of two <= 128:
    # one matrix product per Kronecker factor along its own axis of x seen as
    # [rows, m, a, b, ...] -- n (m + a + b + ...) additions per row, run by BLAS, and no
    # transposed copy: the last factor is one GEMM, the others batched k x k products.
    sizes = [m] if m > 1 else []
    while p > 1:
        sizes.append(min(p, _CHUNK))
        p //= sizes[-1]
    # float64 inside and one rounding to x's dtype at the end: the result is the exact
    # rotation rounded once, whatever order BLAS sums in (the calibration data GPTQ sees
    # then does not depend on that order)
    z = x.astype(np.float64) if inverse else x * d.astype(np.float64)
    post = n
    for k in sizes:
        post //= k
        h = _factor(k).astype(np.float64)
        if inverse:  # H^T = H_m^T (x) H_a^T (x) ...
            h = h.T
        if post == 1:
            z = z.reshape(-1, k) @ h
        else:  # (x H)[.., c, ..] = sum_a H[a, c] x[.., a, ..]: H^T times each [k, post] block
            z = np.matmul(h.T, z.reshape(-1, k, post))
    z = z.reshape(x.shape) / np.sqrt(n)
    if inverse:
        z = z * d
    return z.astype(x.dtype)


_CHUNK = 128


def _factor(k: int) -> np.ndarray:
    """H_k for one Kronecker factor: Sylvester when k is a power of two (1 included), else Paley."""
    if k & (k - 1):
        return _paley(k)
    h = np.ones((1, 1), np.int64)
    while h.shape[0] < k:
        h = np.block([[h, h], [h, -h]])
    return h
