"""GPTQ: one-shot weight quantization with second-order error feedback.

Frantar, Ashkboos, Hoefler & Alistarh, "GPTQ: Accurate Post-Training Quantization for
Generative Pre-trained Transformers", ICLR 2023 (Algorithm 1).

A Linear layer's weight W [out, in] is quantized so that the output on calibration inputs
X [N, in] changes little:  min_Q ||X W^T - X Q^T||_F^2 = sum_i (W_i - Q_i) H (W_i - Q_i)^T,
H = X^T X.  The columns are quantized one at a time, left to right; after column j is
rounded, the remaining columns absorb its error by the optimal-brain-surgeon update

    e    = (W[:, j] - Q[:, j]) / U_jj
    W[:, j:] -= e U_{j, j:}                       (Algorithm 1, lines 6-8)

where U is the upper Cholesky factor of the damped inverse Hessian,
(H + lambda I)^-1 = U^T U, lambda = damp * mean(diag H) (sec. 3, steps 2 and 3).  Row j of U
is exactly the row of the inverse Hessian of the not-yet-quantized columns that the OBS
update needs, so no inverse is ever updated.  Lazy batch updates (step 2): inside a block
of ``block_size`` columns the update touches only the block; the columns after it receive
the block's accumulated errors E [out, B] at once, W[:, after] -= E U[block, after].  The
result is identical to updating every column eagerly (up to float rounding).

Grids (:class:`QuantSpec`): per tensor or per output channel the scale / zero point is
chosen once from W before the loop (as the paper); per group ("group", ``group_size``
consecutive inputs of a row) it is chosen when the first column of the group is reached,
from the group's *current* weights, which already carry the error feedback of the
columns before (the reference code's ``groupsize``).  ``act_order`` processes columns in
order of decreasing H_jj (the "desc_act" heuristic of the reference code: columns with
large activations first, while many columns remain to absorb their error); with groups,
group g is still the inputs [g gs, (g+1) gs) of the original order, so the result is stored
in the ordinary group layout, and its grid is chosen when the first of its columns comes up.

``clip_search`` chooses each row's (or group's) range by the reference code's MSE grid
instead of min / max: the range [p lo, p hi] for p in 1, 0.99, ..., 0.21 that minimises
sum_j |w_j - Q(w_j)|^2.4 over the row, so one outlier weight does not spread the grid so
wide that the other weights fall on a handful of levels (the GPTQ code's ``mse`` option,
grid 100, maxshrink 0.8, norm 2.4).  ``clip_search="hessian"`` weighs column j's term by
H_jj, sum_j H_jj |w_j - Q(w_j)|^2.4: the diagonal of the layer-output objective
(W_i - Q_i) H (W_i - Q_i)^T, so the grid fits the weights of busy inputs first instead of
treating an input that is almost always zero like one that carries every token.

Inputs that are zero on all calibration data (H_jj = 0) get W[:, j] = 0 and H_jj = 1
(:mod:`refcompress._hessian`).  With H = I the update vanishes and GPTQ is exactly
round-to-nearest (the tests check this).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .. import _hessian, kernels
from .._validation import check_array, check_int
from ..errors import ArgumentError, DTypeError
from .qparams import QParams, choose_qparams, dequantize
from .spec import QuantSpec

__all__ = ["GPTQResult", "gptq", "check_layer_spec"]


class GPTQResult(NamedTuple):
    """codes [out, in] (``spec.dtype``), the QParams used (scale / zero point per tensor,
    channel [out] or group [out, in / group_size]), and weight = dequantize(codes, qparams)
    (float32 [out, in], the weight the quantized layer computes with)."""

    codes: np.ndarray
    qparams: QParams
    weight: np.ndarray


def check_layer_spec(spec, n_in: int) -> QuantSpec:
    """A weight spec usable on a [out, in] Linear weight: per tensor, per output channel
    (axis 0) or per group of ``group_size`` inputs dividing ``in``."""
    if not isinstance(spec, QuantSpec):
        raise DTypeError(f"spec: expected a QuantSpec, got {type(spec).__name__}")
    if spec.granularity == "channel" and spec.axis not in (0, -2):
        raise ArgumentError(f"spec: per-channel weights need axis 0 (output channels), got axis {spec.axis}")
    if spec.granularity == "group" and n_in % spec.group_size:
        raise ArgumentError(f"spec.group_size: expected a divisor of the input dimension {n_in}, "
                            f"got {spec.group_size}")
    return spec


#: The clip search's grid (the GPTQ reference code's Quantizer defaults).
CLIP_GRID, CLIP_MAX_SHRINK, CLIP_NORM = 100, 0.8, 2.4


def _choose_range(values, spec, clip_search, col_weight=None) -> QParams:
    """QParams for each row of ``values`` [rows, k] (float64): from min / max, or with
    ``clip_search`` the shrunk range [p min, p max] minimising sum_j c_j |v_j - Q(v_j)|^2.4
    per row (the first minimum over p = 1, 1 - 1/100, ... , 1 - 79/100); c_j = 1, or
    ``col_weight`` [k] (H_jj) when ``clip_search == "hessian"``."""
    lo, hi = values.min(axis=1), values.max(axis=1)
    best = choose_qparams(lo, hi, spec)
    if not clip_search:
        return best
    scale = np.array(best.scale, np.float32).reshape(-1)
    zero = np.array(best.zero_point, np.int32).reshape(-1)
    best_err = None
    for i in range(int(CLIP_MAX_SHRINK * CLIP_GRID)):
        p = 1.0 - i / CLIP_GRID
        qp = choose_qparams(p * lo, p * hi, spec)
        s = np.asarray(qp.scale, np.float64).reshape(-1, 1)
        z = np.asarray(qp.zero_point, np.float64).reshape(-1, 1)
        q = np.clip(np.rint(values / s) + z, spec.qmin, spec.qmax)
        dev = np.abs((q - z) * s - values) ** CLIP_NORM
        err = np.sum(dev if clip_search != "hessian" else dev * col_weight, axis=1)
        better = np.ones(len(err), bool) if best_err is None else err < best_err
        best_err = err if best_err is None else np.where(better, err, best_err)
        scale[better] = np.asarray(qp.scale, np.float32).reshape(-1)[better]
        zero[better] = np.asarray(qp.zero_point, np.int32).reshape(-1)[better]
    return QParams(scale, zero, spec)


def _quantize_column(col, scale, zero_point, spec):
    """Codes and dequantized values of one column [out] with per-row scale / zero point
    (the library's one rounding rule, kernels.quantize)."""
    q = kernels.quantize(col.astype(np.float32), scale, zero_point, axis=0, dtype=spec.dtype,
                         qmin=spec.qmin, qmax=spec.qmax)
    return q, kernels.dequantize(q, scale, zero_point, axis=0).astype(np.float64)


def gptq(weight, x=None, *, spec: QuantSpec, hessian=None, block_size: int = 128, damp: float = 0.01,
         act_order: bool = False, clip_search: bool | str = False) -> GPTQResult:
    """Quantize a Linear weight [out, in] (float32) with GPTQ (Algorithm 1).

    x        : calibration inputs [N, in] (or [..., in]); or pass ``hessian`` = X^T X [in, in]
               (accumulated over batches with :class:`refcompress._hessian.HessianAccumulator`).
    spec     : the integer grid, e.g. ``QuantSpec(4, granularity="channel")`` or
               ``QuantSpec(4, granularity="group", group_size=128)``; symmetric or affine.
    block_size : columns per lazy-update block (B = 128 in the paper); does not change the
               result beyond float rounding.
    damp     : lambda = damp * mean(diag H) is added to diag H (1% in the paper).
    act_order: quantize columns in order of decreasing H_jj.
    clip_search: False, True or "hessian": choose each row's / group's range by the MSE
               grid (module docstring) instead of min / max (per-channel and group
               grids); "hessian" weighs each input's error by H_jj.

    Returns :class:`GPTQResult` (codes, qparams, weight).
    """
    w = check_array(weight, "weight", dtypes=[np.float32], ndim=2, finite=True)
    rows, n = w.shape
    spec = check_layer_spec(spec, n)
    bs = check_int(block_size, "block_size", min_value=1)
    if clip_search not in (False, True, "hessian"):
        raise ArgumentError(f"clip_search: expected False, True or 'hessian', got {clip_search!r}")
    h, dead = _hessian.dead_inputs(_hessian.layer_hessian(x, hessian, n))
    hdiag = np.diag(h).copy()

    W = w.astype(np.float64)
    W[:, dead] = 0.0
    perm = np.argsort(-np.diag(h), kind="stable") if act_order else np.arange(n)
    pos = np.empty(n, np.int64)
    pos[perm] = np.arange(n)  # pos[j]: step at which original column j is quantized
    W = W[:, perm]
    U = _hessian.inverse_cholesky_upper(h[np.ix_(perm, perm)], damp)

    group = spec.granularity == "group"
    if group:
        gs = spec.group_size
        scale = np.ones((rows, n // gs), np.float32)
        zero = np.zeros((rows, n // gs), np.int32)
        chosen = np.zeros(n // gs, bool)
    else:
        if spec.granularity == "channel":
            qp = _choose_range(W, spec, clip_search, hdiag[perm])
        else:
            qp = choose_qparams(W.min(), W.max(), spec)
        col_scale = np.broadcast_to(qp.scale, (rows,)).astype(np.float32)
        col_zero = np.broadcast_to(qp.zero_point, (rows,)).astype(np.int32)

    codes = np.zeros((rows, n), spec.dtype)
    for i1 in range(0, n, bs):
        i2 = min(i1 + bs, n)
        W1 = W[:, i1:i2].copy()
        E1 = np.zeros((rows, i2 - i1))
        for i in range(i2 - i1):
            j = i1 + i
            if group:
                g = perm[j] // gs
                if not chosen[g]:
                    # the group's current weights: in-block columns are up to date in W1;
                    # later columns still owe the lazy update of this block's errors so far
                    cols = pos[g * gs:(g + 1) * gs]
                    cur = np.empty((rows, gs))
                    inb = cols < i2
                    cur[:, inb] = W1[:, cols[inb] - i1]
                    cur[:, ~inb] = W[:, cols[~inb]] - E1[:, :i] @ U[i1:j, cols[~inb]]
                    gqp = _choose_range(cur, spec, clip_search, hdiag[g * gs:(g + 1) * gs])
                    scale[:, g], zero[:, g] = gqp.scale, gqp.zero_point
                    chosen[g] = True
                col_scale, col_zero = scale[:, g], zero[:, g]
            q, deq = _quantize_column(W1[:, i], col_scale, col_zero, spec)
            codes[:, j] = q
            err = (W1[:, i] - deq) / U[j, j]
            W1[:, i:] -= np.outer(err, U[j, j:i2])
            E1[:, i] = err
        W[:, i2:] -= E1 @ U[i1:i2, i2:]

    codes = codes[:, pos]  # back to the original column order
    if group:
        qp = QParams(scale, zero, spec)
    out = dequantize(codes, qp)
    return GPTQResult(codes, qp, out)
