"""W8A8 Linear: int8 weights and 8-bit activations, float in and out, on the integer qgemm.

One layer, three ways to quantize its input x [..., K] (weights always symmetric int8,
narrow range, one scale s_w[n] per output row):

* ``"static"``  - uint8 affine with a scale s_a and zero point z_a fixed by calibration:
                  q_a = sat(round(x / s_a) + z_a);
* ``"tensor"``  - the same, with s_a, z_a taken from each call's own min / max (dynamic);
* ``"token"``   - int8 symmetric, one scale per row (token): s_i = max_j |x_ij| / 127,
                  q_ij = round(x_ij / s_i) (dynamic per-token, as LLM.int8 and ZeroQuant do),
                  by kernels.quantize_rows in one fused pass per row (s_i = 1 where
                  max_j |x_ij| / 127 is 0; a row with NaN / Inf is refused).

The product is exact in int32 (kernels.qgemm) and the epilogue dequantizes it in one pass:

    y[i, n] = float32(sum_j (q_a[i, j] - z_a) q_w[n, j]) * (s_a s_w[n]) [* s_i] + b[n].

**SmoothQuant** (Xiao et al., "SmoothQuant: Accurate and Efficient Post-Training
Quantization for Large Language Models", ICML 2023, eq. 3-4) divides each input channel by
a factor m_j and multiplies the matching weight column by it, X W^T = (X diag(m)^-1)
(W diag(m))^T, moving activation outliers into the weights.  Here the division is not a
separate pass and needs no surgery on the previous layer: with ``smooth`` = m, the static
and per-tensor quantizers use the per-channel scale s_a m_j (one kernels.quantize call with
axis=-1), and the stored weights are Q(W diag(m)).  The per-token quantizer multiplies by
the float32 reciprocals 1/m_j first (its scale already varies along the other axis):
x_ij * float32(1 / m_j), one rounding, with 1/m computed once per layer and cached -- a
multiply, not a division by m_j (the two can differ in the last bit).  With m = 1 the
multiply is skipped (it would be exact anyway).
"""

from __future__ import annotations

import numpy as np

from .. import kernels
from .._validation import check_array, check_choice
from ..errors import ArgumentError, ShapeError
from ..nn.module import Module
from ..nn.spec import register_module
from .modules import _Cached
from .qparams import calibrate, choose_qparams
from .spec import QuantSpec

__all__ = ["W8A8Linear", "ACTIVATION_MODES", "WEIGHT_SPEC", "ACTIVATION_SPEC"]

ACTIVATION_MODES = ("static", "tensor", "token")
#: int8 symmetric narrow range, one scale per output row.
WEIGHT_SPEC = QuantSpec(8, granularity="channel", axis=0)
#: uint8 affine over the whole range (static and per-tensor activations).
ACTIVATION_SPEC = QuantSpec(8, signed=False, symmetric=False, narrow_range=False)


@register_module
class W8A8Linear(Module):
    """float [..., in_features] -> float [..., out_features] through int8 x 8-bit qgemm.

    Buffers: ``weight_q`` int8 [out, in], ``weight_scale`` float32 [out], ``bias`` float32
    [out] (or None), ``smooth`` float32 [in] (SmoothQuant factors m, ones when unused),
    ``input_scale`` / ``input_zero_point`` (static mode: float32 and int32 scalars).
    Build one with :meth:`from_float`.  Inference only (``backward`` refuses).
    """

    fixed_float_dtype = np.float32  # float32 kernels and scales: Module.to refuses other dtypes

    def __init__(self, in_features: int, out_features: int, bias: bool = True, activation: str = "static"):
        super().__init__()
        self.in_features, self.out_features = int(in_features), int(out_features)
        self.activation = check_choice(activation, "activation", ACTIVATION_MODES)
        self.register_buffer("weight_q", np.zeros((self.out_features, self.in_features), np.int8))
        self.register_buffer("weight_scale", np.ones(self.out_features, np.float32))
        self.register_buffer("smooth", np.ones(self.in_features, np.float32))
        self.register_buffer("input_scale", np.ones((), np.float32))
        self.register_buffer("input_zero_point", np.zeros((), np.int32))
        if bias:
            self.register_buffer("bias", np.zeros(self.out_features, np.float32))
        else:
            self.bias = None
        self._packed = _Cached()
        self._derived = _Cached()
        self._inv_smooth = _Cached()

    @classmethod
    def from_float(cls, weight, bias=None, *, activation: str = "static", smooth=None,
                   calibration=None) -> "W8A8Linear":
        """Quantize a float layer.

        weight [out, in] float; bias [out] or None; smooth: SmoothQuant factors m [in]
        (> 0) or None; calibration: inputs [..., in] seen by the layer (required for
        ``"static"``: s_a, z_a come from the min / max of x / m over them).
        """
        w = check_array(weight, "weight", ndim=2, finite=True).astype(np.float32)
        out_f, in_f = w.shape
        layer = cls(in_f, out_f, bias is not None, activation)
        m = np.ones(in_f, np.float32) if smooth is None else check_array(
            smooth, "smooth", shape=(in_f,), finite=True).astype(np.float32)
        if not np.all(m > 0):
            raise ArgumentError("smooth: expected factors > 0")
        ws = w * m  # W diag(m)
        qp = calibrate(ws, WEIGHT_SPEC)
        layer.weight_q = kernels.quantize(ws, qp.scale, qp.zero_point, axis=0, dtype=np.int8,
                                          qmin=WEIGHT_SPEC.qmin, qmax=WEIGHT_SPEC.qmax)
        layer.weight_scale = qp.scale.astype(np.float32)
        layer.smooth = m
        if bias is not None:
            layer.bias = check_array(bias, "bias", shape=(out_f,), finite=True).astype(np.float32)
        if layer.activation == "static":
            if calibration is None:
                raise ArgumentError("calibration: static activations need calibration inputs [..., in]")
            x = check_array(calibration, "calibration", finite=True)
            if x.shape[-1] != in_f:
                raise ShapeError(f"calibration: expected last dimension {in_f}, got shape {x.shape}")
            xs = x.reshape(-1, in_f).astype(np.float32) / m
            aq = choose_qparams(np.float32(xs.min()), np.float32(xs.max()), ACTIVATION_SPEC)
            layer.input_scale = np.asarray(aq.scale, np.float32).reshape(())
            layer.input_zero_point = np.asarray(aq.zero_point, np.int32).reshape(())
        return layer.eval()

    def _static_params(self):
        """Per-channel quantizer scale s_a m_j, its zero points, and the epilogue's s_a s_w
        (cached until a buffer is replaced)."""
        def build(src):
            s_a, m, s_w, z = float(src[0]), src[1], src[2], int(src[3])
            return ((np.float32(s_a) * m).astype(np.float32), np.full(self.in_features, z, np.int32),
                    (np.float64(s_a) * s_w.astype(np.float64)).astype(np.float32))
        return self._derived.get((self.input_scale, self.smooth, self.weight_scale, self.input_zero_point), build)

    def _token_inv_smooth(self):
        """float32(1 / m) for the per-token quantizer, or None when m = 1 (cached)."""
        def build(m):
            if np.all(m == 1):
                return None
            with np.errstate(over="ignore", divide="ignore"):  # refused just below, by name
                inv = (np.float32(1) / m).astype(np.float32)
            if not np.all(np.isfinite(inv)):
                raise ArgumentError(f"smooth: expected factors whose float32 reciprocal is finite, "
                                    f"got {m[~np.isfinite(inv)][0]!r}")
            return inv
        return self._inv_smooth.get(self.smooth, build)

    def forward(self, x):
        x = check_array(x, "x", dtypes=[np.float32], min_ndim=1)
        if x.shape[-1] != self.in_features:
            raise ShapeError(f"x: expected last dimension {self.in_features}, got shape {x.shape}")
        lead = x.shape[:-1]
        x2 = np.ascontiguousarray(x.reshape(-1, self.in_features))
        pw = self._packed.get(self.weight_q, lambda w: kernels.pack_weights(np.ascontiguousarray(w.T)))
        mode = self.activation
        if mode == "token":
            q, s_i = kernels.quantize_rows(x2, self._token_inv_smooth())
            out = kernels.Dequantize(self.weight_scale, row_scale=s_i, bias=self.bias)
            y = kernels.qgemm(q, pw, 0, output=out)
        else:
            if mode == "static":
                chan_scale, zeros, out_scale = self._static_params()
                z = int(self.input_zero_point)
            else:
                xs = x2 / self.smooth
                # no rows, no range: any qparams give the (0, N) output the other modes give
                lo, hi = (np.float32(xs.min()), np.float32(xs.max())) if xs.size else (np.float32(0), np.float32(0))
                aq = choose_qparams(lo, hi, ACTIVATION_SPEC)
                z = int(aq.zero_point)
                zeros = np.full(self.in_features, z, np.int32)
                chan_scale = (np.float32(aq.scale) * self.smooth).astype(np.float32)
                out_scale = (np.float64(aq.scale) * self.weight_scale.astype(np.float64)).astype(np.float32)
            q = kernels.quantize(x2, chan_scale, zeros, axis=1, dtype=np.uint8)
            y = kernels.qgemm(q, pw, z, output=kernels.Dequantize(out_scale, bias=self.bias))
        return y.reshape(lead + (self.out_features,))

    def dense_weight(self) -> np.ndarray:
        """The float weight this layer applies to x: s_w[n] q_w[n, j] / m_j  ([out, in])."""
        return (self.weight_q.astype(np.float32) * self.weight_scale[:, None]) / self.smooth

    def get_config(self):
        return {"in_features": self.in_features, "out_features": self.out_features,
                "bias": self.bias is not None, "activation": self.activation}
