"""Tucker-2 decomposition of a convolution kernel (Kim et al. 2016).

A Conv2d kernel K [T, S, kh, kw] (T output, S input channels) is approximated on its two
channel modes only (the spatial modes are tiny and are kept whole):

    K[t, s, i, j] ~ sum_{a < R3, b < R4} U_out[t, a] C[a, b, i, j] U_in[s, b]
                  = C x_1 U_out x_2 U_in,

with orthonormal U_out [T, R3], U_in [S, R4] and core C [R3, R4, kh, kw].  The convolution
then factors into three (each is linear, so the composition is exact for the approximated
kernel):

    1x1 conv S -> R4 with U_in^T,   kh x kw conv R4 -> R3 with C (the original stride,
    padding, dilation),   1x1 conv R3 -> T with U_out (and the bias).

MACs per image: S R4 H W + R4 R3 kh kw H' W' + R3 T H' W'   versus   T S kh kw H' W'.

Algorithm.  HOSVD (De Lathauwer et al. 2000a) initialises U_out, U_in with the leading left
singular vectors of the mode-1 / mode-2 unfoldings; HOOI (higher-order orthogonal
iteration, De Lathauwer et al. 2000b) then alternates
    U_out <- leading R3 left singular vectors of unfold_1(K x_2 U_in^T),
    U_in  <- leading R4 left singular vectors of unfold_2(K x_1 U_out^T),
each step maximising ||C||_F = ||K x_1 U_out^T x_2 U_in^T||_F over one factor, so the
error ||K - C x_1 U_out x_2 U_in||_F^2 = ||K||^2 - ||C||^2 never increases.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .._validation import check_array, check_float, check_int
from ..errors import ArgumentError
from .ranks import evbmf

__all__ = ["Tucker2", "tucker2", "tucker2_reconstruct", "tucker2_ranks_vbmf", "tucker2_macs",
           "conv_macs", "tucker2_ranks_for_macs", "check_tucker2_ranks", "clamp_tucker2_ranks"]

FLOATS = (np.float32, np.float64)


@dataclass
class Tucker2:
    """Result of :func:`tucker2`: core [R3, R4, kh, kw], u_out [T, R3], u_in [S, R4] (float64)
    and the relative error after initialisation and after every HOOI sweep."""

    core: np.ndarray
    u_out: np.ndarray
    u_in: np.ndarray
    errors: list


def check_conv_weight(weight, name="weight"):
    w = check_array(weight, name, dtypes=FLOATS, ndim=4, finite=True)
    return w


def check_tucker2_ranks(weight_shape, ranks, *, hooi: bool = True) -> tuple[int, int]:
    """(R3, R4) checked against the ranks a Tucker-2 of a [T, S, kh, kw] kernel can supply:

        1 <= R3 <= min(T, R4 kh kw),     1 <= R4 <= min(S, R3 kh kw).

    U_out holds the leading R3 left singular vectors of unfold_1(K x_2 U_in^T) [T, R4 kh kw]
    and U_in those of unfold_2(K x_1 U_out^T) [S, R3 kh kw], so neither matrix has more
    columns to give.  With ``hooi=False`` (HOSVD alone: ``tucker2(..., n_iter=0)``) only
    the unfoldings of K itself bound them: R3 <= min(T, S kh kw), R4 <= min(S, T kh kw).
    Raises ArgumentError naming ``ranks`` and the bound.
    """
    T, S, kh, kw = _check_weight_shape(weight_shape)
    if not (isinstance(ranks, (tuple, list)) and len(ranks) == 2):
        raise ArgumentError(f"ranks: expected a pair (out_rank, in_rank), got {ranks!r}")
    r3 = check_int(ranks[0], "ranks[0] (out_rank)", min_value=1, max_value=T)
    r4 = check_int(ranks[1], "ranks[1] (in_rank)", min_value=1, max_value=S)
    k = kh * kw
    if not hooi:
        if r3 > S * k or r4 > T * k:
            raise ArgumentError(f"ranks: expected R3 <= S kh kw = {S * k} and R4 <= T kh kw = {T * k} "
                                f"(the HOSVD of a {T}x{S}x{kh}x{kw} kernel), got ({r3}, {r4})")
        return r3, r4
    if r3 > r4 * k or r4 > r3 * k:
        raise ArgumentError(
            f"ranks: expected R3 <= R4 kh kw and R4 <= R3 kh kw (a Tucker-2 of a {kh}x{kw} kernel cannot "
            f"supply more), got ({r3}, {r4}); the largest R3 for R4 = {r4} is {min(T, r4 * k)}, the largest "
            f"R4 for R3 = {r3} is {min(S, r3 * k)}")
    return r3, r4


def clamp_tucker2_ranks(weight_shape, ranks) -> tuple[int, int]:
    """(R3, R4) clamped into the ranks :func:`check_tucker2_ranks` accepts: first into
    [1, T] x [1, S], then R3 <- min(R3, R4 kh kw), then R4 <- min(R4, R3 kh kw).  The result
    satisfies both bounds (if R4 is lowered to R3 kh kw, R4 kh kw = R3 (kh kw)^2 >= R3) and
    costs no more MACs or parameters than the input."""
    T, S, kh, kw = _check_weight_shape(weight_shape)
    k = kh * kw
    r3 = min(max(int(ranks[0]), 1), T)
    r4 = min(max(int(ranks[1]), 1), S)
    r3 = min(r3, r4 * k)
    r4 = min(r4, r3 * k)
    return r3, r4


def _check_weight_shape(weight_shape):
    """(T, S, kh, kw) from a conv weight shape: 4 positive ints."""
    try:
        dims = tuple(weight_shape)
    except TypeError:
        dims = None
    if dims is None or len(dims) != 4:
        raise ArgumentError(f"weight_shape: expected a conv weight shape (T, S, kh, kw), got {weight_shape!r}")
    return tuple(check_int(v, f"weight_shape[{i}]", min_value=1) for i, v in enumerate(dims))


def _leading(mat, r):
    u, _, _ = np.linalg.svd(mat, full_matrices=False)
    # check_tucker2_ranks guarantees mat has at least r columns: a narrower U would leave the
    # factors (and the layer built from them) smaller than the ranks asked for.
    assert u.shape[1] >= r, (mat.shape, r)
    u = u[:, :r]
    # Deterministic signs: the largest-magnitude entry of each column positive.
    flip = np.sign(u[np.argmax(np.abs(u), axis=0), np.arange(u.shape[1])])
    flip[flip == 0] = 1.0
    return u * flip


def tucker2_reconstruct(core, u_out, u_in) -> np.ndarray:
    """K_hat = C x_1 U_out x_2 U_in: [T, S, kh, kw]."""
    return np.einsum("abij,ta,sb->tsij", core, u_out, u_in, optimize=True)


def tucker2(weight, ranks, *, n_iter: int = 50, tol: float = 1e-10) -> Tucker2:
    """Tucker-2 of a conv kernel ``weight`` [T, S, kh, kw] with ranks (R3, R4) = (out, in).

    HOSVD initialisation, then at most ``n_iter`` HOOI sweeps, stopping when the relative
    error improves by less than ``tol``.  Computation in float64.  Raises ArgumentError for
    ranks a Tucker-2 cannot supply (outside [1, T] / [1, S], or R3 > R4 kh kw, or
    R4 > R3 kh kw; with ``n_iter=0`` the HOSVD bounds: :func:`check_tucker2_ranks`),
    ShapeError for a non-4-D weight.
    """
    w = check_conv_weight(weight).astype(np.float64)
    T, S = w.shape[:2]
    n_iter = check_int(n_iter, "n_iter", min_value=0)
    r3, r4 = check_tucker2_ranks(w.shape, ranks, hooi=n_iter > 0)
    tol = check_float(tol, "tol", min_value=0.0)
    norm = float(np.linalg.norm(w)) or 1.0
    u_out = _leading(w.reshape(T, -1), r3)
    u_in = _leading(w.transpose(1, 0, 2, 3).reshape(S, -1), r4)

    def error(core):
        # Reconstructed rather than sqrt(||K||^2 - ||C||^2): no cancellation near zero error.
        return float(np.linalg.norm(w - tucker2_reconstruct(core, u_out, u_in)) / norm)

    core = np.einsum("tsij,ta,sb->abij", w, u_out, u_in, optimize=True)
    errors = [error(core)]
    for _ in range(n_iter):
        y = np.einsum("tsij,sb->tbij", w, u_in, optimize=True)
        u_out = _leading(y.reshape(T, -1), r3)
        z = np.einsum("tsij,ta->saij", w, u_out, optimize=True)
        u_in = _leading(z.reshape(S, -1), r4)
        core = np.einsum("tsij,ta,sb->abij", w, u_out, u_in, optimize=True)
        errors.append(error(core))
        if errors[-2] - errors[-1] < tol:
            break
    return Tucker2(core, u_out, u_in, errors)


def tucker2_ranks_vbmf(weight) -> tuple[int, int]:
    """(R3, R4) by EVBMF on the mode-1 and mode-2 unfoldings (Kim et al. 2016), each >= 1,
    then clamped to the ranks a Tucker-2 can supply (:func:`clamp_tucker2_ranks`)."""
    w = check_conv_weight(weight)
    T, S = w.shape[:2]
    r3, _, _ = evbmf(w.reshape(T, -1))
    r4, _, _ = evbmf(w.transpose(1, 0, 2, 3).reshape(S, -1))
    return clamp_tucker2_ranks(w.shape, (r3, r4))


def conv_macs(out_channels, in_channels_per_group, kh, kw, out_hw) -> int:
    """Multiply-adds of a dense conv per image: T (S/g) kh kw H' W'."""
    return int(out_channels * in_channels_per_group * kh * kw * out_hw[0] * out_hw[1])


def tucker2_macs(out_channels, in_channels, kh, kw, ranks, in_hw, out_hw) -> int:
    """Per-image MACs of the three factored convs: S R4 H W + R4 R3 kh kw H'W' + R3 T H'W'."""
    r3, r4 = ranks
    return int(in_channels * r4 * in_hw[0] * in_hw[1]
               + r4 * r3 * kh * kw * out_hw[0] * out_hw[1] + r3 * out_channels * out_hw[0] * out_hw[1])


def tucker2_ranks_for_macs(weight_shape, fraction, in_hw, out_hw) -> tuple[int, int]:
    """Largest ranks (R3, R4) = (ceil-free round(rho T), round(rho S)) whose Tucker-2 MACs are
    <= ``fraction`` of the dense conv's, keeping the channel proportions (rho in (0, 1]).

    Each candidate is clamped to the ranks a Tucker-2 can supply (:func:`clamp_tucker2_ranks`:
    R3 <= R4 kh kw, R4 <= R3 kh kw), so a conv with few input channels (an RGB stem) gets
    e.g. (9, 1) for a 3x3 kernel rather than an R3 the decomposition cannot fill.
    ``weight_shape`` is (T, S, kh, kw), 4 positive ints."""
    T, S, kh, kw = _check_weight_shape(weight_shape)
    frac = check_float(fraction, "fraction", min_value=0.0, max_value=1.0, min_inclusive=False)
    target = frac * conv_macs(T, S, kh, kw, out_hw)
    best = None
    for r3 in range(1, T + 1):
        r3, r4 = clamp_tucker2_ranks((T, S, kh, kw), (r3, round(r3 * S / T)))
        if tucker2_macs(T, S, kh, kw, (r3, r4), in_hw, out_hw) <= target:
            best = (r3, r4)
    if best is None:
        raise ArgumentError(f"fraction: {frac} of the conv's MACs is below the smallest Tucker-2 (ranks (1, 1))")
    return best
