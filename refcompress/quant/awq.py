"""AWQ: activation-aware weight quantization by per-input-channel scaling.

Lin, Tang, Tang, Yang, Chen, Wang, Xiao, Dang, Gan & Han, "AWQ: Activation-aware Weight
Quantization for LLM Compression and Acceleration", MLSys 2024.

Weights that multiply large activations matter most (sec. 3.1).  Scaling input channel j
of the weight up by s_j and its input down by the same factor leaves the float product
unchanged, but shrinks the relative rounding error of the salient weights (sec. 3.2):

    Y ~= (X diag(s)^-1) Q(W diag(s))^T .

The scale comes from the activation magnitude alone, with one exponent searched on a grid
(their eq. 5):

    s = s_X^alpha / sqrt(max(s_X^alpha) min(s_X^alpha)),    s_X,j = mean_t |X_tj|,
    alpha* = argmin_{alpha in grid} || X W^T - (X diag(s)^-1) Q(W diag(s))^T ||_F ,

(the normalisation by the geometric mean of the extremes is the reference code's; it does
not change the product, only keeps W diag(s) in range).  The grid is alpha = 0, 1/20, ...,
19/20 in [0, 1); alpha = 0 gives s = 1, i.e. plain round-to-nearest, so AWQ is never worse
than RTN on the calibration data.

Weight clipping (the reference code's ``auto_clip``): the quantization range of each output
row (per-channel) or each (row, group) (group-wise) is shrunk to ratio r of its min / max,
r from a small grid 1.0, 0.95, ..., 0.55, minimising the same output error.  Rows are
independent; groups of one row interact, so they are visited one at a time (coordinate
descent, r = 1 in the grid) and the error never increases.  (The reference code scores each
group by its partial output alone; coordinate descent on the full output error is the same
search with a guarantee.)

The layer stores Q(W diag s) and multiplies its input by ``input_scale`` = 1 / s, or the
factor is folded into the previous op (a LayerNorm's gamma and beta, or the previous
Linear's output rows).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .._validation import check_array
from ..errors import ArgumentError, ShapeError
from .gptq import check_layer_spec
from .qparams import QParams, choose_qparams, dequantize, quantize, tensor_minmax
from .spec import QuantSpec

__all__ = ["AWQResult", "awq", "awq_scales", "DEFAULT_ALPHAS", "DEFAULT_CLIP_RATIOS"]

FLOATS = (np.float32, np.float64)
DEFAULT_ALPHAS = np.arange(20) / 20.0
DEFAULT_CLIP_RATIOS = 1.0 - np.arange(10) / 20.0


class AWQResult(NamedTuple):
    """codes [out, in] of Q(W diag s) (``spec.dtype``) and the QParams used; weight =
    dequantize(codes, qparams), float32 [out, in] (the *scaled* weight the layer stores);
    input_scale = 1 / s, float32 [in]: the layer computes (x * input_scale) weight^T;
    alpha: the chosen exponent; clip_ratio: the chosen range ratios (shape of the scales:
    [out] or [out, in / group_size]; all 1.0 when clipping is off)."""

    codes: np.ndarray
    qparams: QParams
    weight: np.ndarray
    input_scale: np.ndarray
    alpha: float
    clip_ratio: np.ndarray

    def effective_weight(self) -> np.ndarray:
        """weight diag(input_scale): the float weight the original input x meets."""
        return self.weight * self.input_scale


def awq_scales(x_mean_abs, alpha: float) -> np.ndarray:
    """s = m^alpha / sqrt(max(m^alpha) min(m^alpha)), m = mean_t |X_tj| clamped to >= 1e-4
    after the power (the reference code's clamp), float32 [in]."""
    m = np.asarray(x_mean_abs, np.float64)
    s = np.maximum(m**alpha, 1e-4)
    return (s / np.sqrt(s.max() * s.min())).astype(np.float32)


def _rtn(w, spec, ratio=None):
    """Round-to-nearest with the range [min, max] of each scale's slice times ``ratio``."""
    lo, hi = tensor_minmax(w, spec)
    if ratio is not None:
        lo, hi = np.asarray(lo, np.float64) * ratio, np.asarray(hi, np.float64) * ratio
    qp = choose_qparams(lo, hi, spec)
    q = quantize(w, qp)
    return q, qp, dequantize(q, qp)


def awq(weight, x, *, spec: QuantSpec, alphas=None, clip: bool = True, clip_ratios=None) -> AWQResult:
    """Quantize a Linear weight [out, in] (float32) with AWQ's scale search (and clipping).

    x           : calibration inputs [N, in] (or [..., in]), float32 / float64.
    spec        : the weight grid, e.g. ``QuantSpec(4, granularity="group", group_size=128)``.
    alphas      : the exponent grid (default 0, 0.05, ..., 0.95), values in [0, 1); it
                  must contain 0, which is what makes AWQ never worse than RTN.
    clip        : search the clipping ratio per row (per channel) or per (row, group).
    clip_ratios : that grid (default 1.0, 0.95, ..., 0.55); must contain 1.0.

    Returns :class:`AWQResult`.
    """
    w = check_array(weight, "weight", dtypes=[np.float32], ndim=2, finite=True)
    rows, n = w.shape
    spec = check_layer_spec(spec, n)
    xa = check_array(x, "x", dtypes=FLOATS, min_ndim=1, finite=True)
    if xa.shape[-1] != n:
        raise ShapeError(f"x: expected last dimension {n} (the layer's in_features), got shape {xa.shape}")
    X = xa.reshape(-1, n).astype(np.float64)
    alphas = DEFAULT_ALPHAS if alphas is None else np.asarray(alphas, np.float64).reshape(-1)
    if alphas.size == 0 or not np.all((alphas >= 0) & (alphas < 1)) or not np.any(alphas == 0):
        raise ArgumentError(f"alphas: expected values in [0, 1) including 0, got {alphas}")
    ratios = DEFAULT_CLIP_RATIOS if clip_ratios is None else np.asarray(clip_ratios, np.float64).reshape(-1)
    if ratios.size == 0 or not np.all((ratios > 0) & (ratios <= 1)) or not np.any(ratios == 1):
        raise ArgumentError(f"clip_ratios: expected values in (0, 1] including 1, got {ratios}")

    ref = X @ w.astype(np.float64).T
    mean_abs = np.abs(X).mean(axis=0) if X.shape[0] else np.ones(n)

    best = None
    for a in alphas:  # the scale search, eq. 5
        s = awq_scales(mean_abs, a)
        inv = (np.float32(1) / s).astype(np.float32)
        ws = (w * s).astype(np.float32)
        _, _, deq = _rtn(ws, spec)
        loss = float(np.sum((ref - (X * inv) @ deq.astype(np.float64).T) ** 2))
        if best is None or loss < best[0]:
            best = (loss, float(a), ws, inv)
    _, alpha, ws, inv = best
    Xs = X * inv.astype(np.float64)

    lo, _ = tensor_minmax(ws, spec)
    ratio = np.ones(np.shape(lo))
    if clip:
        ratio = _clip_search(ws, Xs, ref, spec, ratios)
    codes, qp, deq = _rtn(ws, spec, ratio)
    return AWQResult(codes, qp, deq, inv, alpha, ratio)


def _clip_search(ws, Xs, ref, spec, ratios):
    """Per-row (or per (row, group)) range ratio minimising ||ref - Xs Q_r(ws)^T||."""
    rows, n = ws.shape
    if spec.granularity == "tensor":
        losses = [np.sum((ref - Xs @ _rtn(ws, spec, r)[2].astype(np.float64).T) ** 2) for r in ratios]
        return np.array(ratios[int(np.argmin(losses))])
    if spec.granularity == "channel":
        # rows are independent: the per-row argmin over the grid is the joint optimum
        losses = np.stack([np.sum((ref - Xs @ _rtn(ws, spec, r)[2].astype(np.float64).T) ** 2, axis=0)
                           for r in ratios])  # [n_ratios, out]
        return ratios[np.argmin(losses, axis=0)]
    gs = spec.group_size
    ng = n // gs
    ratio = np.ones((rows, ng))
    deq = _rtn(ws, spec)[2].astype(np.float64)
    resid = ref - Xs @ deq.T  # [N, out]
    for g in range(ng):  # coordinate descent over the groups of each row
        sl = slice(g * gs, (g + 1) * gs)
        cand = []
        wg = np.ascontiguousarray(ws[:, sl])  # one group per row: the same spec applies
        for r in ratios:
            dg = _rtn(wg, spec, np.full((rows, 1), r))[2].astype(np.float64)
            res = resid - Xs[:, sl] @ (dg - deq[:, sl]).T
            cand.append((np.sum(res**2, axis=0), dg))
        losses = np.stack([c[0] for c in cand])  # [n_ratios, out]
        k = np.argmin(losses, axis=0)  # first minimum: ratio 1.0 wins ties
        new = np.stack([c[1] for c in cand])[k, np.arange(rows)]  # [out, gs]
        resid = resid - Xs[:, sl] @ (new - deq[:, sl]).T
        deq[:, sl] = new
        ratio[:, g] = ratios[k]
    return ratio
