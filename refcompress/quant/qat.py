"""Quantization-aware training: fake quantization in the forward, straight-through
gradients in the backward, then conversion to the integer model.

``prepare_qat(model)`` folds BatchNorm, replaces each Conv2d / Linear by a QAT twin whose
weights are fake-quantized (symmetric, per output channel) on every forward, and puts a
:class:`FakeQuantize` on the model input and on every layer's output (after a fused
ReLU).  The model trains with the ordinary nn toolkit (``nn.fit``); ``convert_qat`` then
builds the integer model of :mod:`refcompress.quant.modules` from the trained weights and
the activation ranges the fake quantizers settled on, so the simulation and the integer
model agree (see examples/quantize_digits.py for the measured agreement).

Activation ranges are tracked with a moving-average min / max (Jacob et al. 2018, sec. 3)
or, with ``lsq=True``, learned as step sizes (Esser et al. 2020; see
:mod:`refcompress.quant.lsq`) for both activations and per-channel weights.
"""

from __future__ import annotations

import numpy as np

from .. import nn
from .._validation import check_int
from ..errors import ArgumentError
from ..nn.module import Module, Parameter
from ..nn.spec import register_module
from .convert import _check_sequential, _integer_layer, _rebuild, _stub, _units
from .lsq import lsq_init_step
from .modules import DequantizeStub, QuantizedMaxPool2d, QuantizeStub
from .observers import MovingAverageMinMaxObserver
from .qparams import QParams, calibrate, choose_qparams, fake_quantize
from .spec import QuantSpec


def _act_spec(bits):
    return QuantSpec(bits, signed=False, symmetric=False, narrow_range=False)


@register_module
class FakeQuantize(Module):
    """Activation fake quantization: x_hat = dequant(quant(x)) with affine uint ``bits``.

    Training: the range follows a moving average of batch min / max (or, with ``lsq``, a
    learned step with a fixed zero point) and the backward passes gradients only where x
    was inside the range (STE).  Eval: the range is frozen.
    """

    def __init__(self, bits: int = 8, lsq: bool = False, averaging_constant: float = 0.01):
        super().__init__()
        self.bits, self.lsq, self.averaging_constant = int(bits), bool(lsq), float(averaging_constant)
        self.register_buffer("range_min", np.zeros(1, np.float32))
        self.register_buffer("range_max", np.zeros(1, np.float32))
        self.register_buffer("initialized", np.zeros(1, np.int32))
        if self.lsq:
            self.step = Parameter(np.ones(1, np.float32))
        self._cache = None

    def qparams(self) -> QParams:
        spec = _act_spec(self.bits)
        if self.lsq:
            z = int(np.clip(np.rint(-self.range_min[0] / self.step.data[0]), spec.qmin, spec.qmax))
            return QParams(np.float32(abs(self.step.data[0]) or 1.0), np.int32(z), spec)
        return choose_qparams(float(self.range_min[0]), float(self.range_max[0]), spec)

    def forward(self, x):
        x = np.asarray(x, np.float32)
        if self.training:
            lo, hi = float(x.min()), float(x.max())
            if not self.initialized[0]:
                self.range_min, self.range_max = np.array([lo], np.float32), np.array([hi], np.float32)
                if self.lsq:
                    self.step.data = np.array([max(hi - min(lo, 0.0), 1e-8) / (2**self.bits - 1)], np.float32)
                self.initialized = np.ones(1, np.int32)
            elif not self.lsq:
                c = self.averaging_constant
                self.range_min = self.range_min + np.float32(c) * (np.float32(lo) - self.range_min)
                self.range_max = self.range_max + np.float32(c) * (np.float32(hi) - self.range_max)
        qp = self.qparams()
        x_hat, mask = fake_quantize(x, qp)
        if self.training:
            self._cache = (mask, x, qp)
        return x_hat

    def backward(self, grad_out):
        mask, x, qp = self._cache_or_raise()
        if self.lsq:
            spec = qp.spec
            r = x / qp.scale + float(qp.zero_point)  # code before rounding
            inside = (r > spec.qmin) & (r < spec.qmax)
            ds = np.where(inside, np.rint(r) - r, np.where(r <= spec.qmin, spec.qmin, spec.qmax) - float(qp.zero_point))
            g = 1.0 / np.sqrt(x.size * spec.qmax)
            self.step.accumulate_grad(np.array([np.sum(grad_out * ds) * g], np.float32))
        return grad_out * mask

    def get_config(self):
        return {"bits": self.bits, "lsq": self.lsq, "averaging_constant": self.averaging_constant}


class _QATWeights:
    """Per-output-channel symmetric fake quantization of a layer's weight, as a mixin:
    forward and backward run the float layer on w_hat, and the weight gradient passes
    through the STE mask (with ``lsq``, the per-channel steps are learned too)."""

    def _init_qat(self, weight_bits, lsq):
        self.weight_bits, self.lsq = int(weight_bits), bool(lsq)
        spec = self.weight_spec()
        if self.lsq:
            w = self.weight.data
            steps = [lsq_init_step(w[i], spec.qmax) for i in range(w.shape[0])]
            self.weight_step = Parameter(np.asarray(steps, np.float32))

    def weight_spec(self):
        return QuantSpec(self.weight_bits, granularity="channel", axis=0)

    def weight_qparams(self) -> QParams:
        if self.lsq:
            s = np.abs(self.weight_step.data).astype(np.float32)
            return QParams(np.maximum(s, np.finfo(np.float32).tiny), np.zeros(s.shape, np.int32), self.weight_spec())
        return calibrate(self.weight.data.astype(np.float32), self.weight_spec())

    def _swap(self):
        qp = self.weight_qparams()
        w = self.weight.data
        w_hat, mask = fake_quantize(w.astype(np.float32), qp)
        self.weight.data = w_hat.astype(w.dtype)
        return w, mask, qp

    def forward(self, x):
        w, mask, qp = self._swap()
        try:
            y = super().forward(x)
        finally:
            self.weight.data = w
        return y

    def backward(self, grad_out):
        w, mask, qp = self._swap()
        before = None if self.weight.grad is None else self.weight.grad.copy()
        try:
            gx = super().backward(grad_out)
        finally:
            self.weight.data = w
        g_new = self.weight.grad - (0 if before is None else before)
        if self.lsq:
            spec = qp.spec
            s = qp.scale.reshape((-1,) + (1,) * (w.ndim - 1))
            r = w / s
            inside = (r > spec.qmin) & (r < spec.qmax)
            ds = np.where(inside, np.rint(r) - r, np.where(r <= spec.qmin, spec.qmin, spec.qmax))
            g = 1.0 / np.sqrt(w[0].size * spec.qmax)
            self.weight_step.accumulate_grad((np.sum(g_new * ds, axis=tuple(range(1, w.ndim))) * g).astype(np.float32))
        self.weight.grad = (0 if before is None else before) + g_new * mask
        return gx


@register_module
class QATLinear(_QATWeights, nn.Linear):
    """nn.Linear trained through per-channel weight fake quantization."""

    def __init__(self, in_features, out_features, bias=True, weight_bits=8, lsq=False, rng=None):
        super().__init__(in_features, out_features, bias, rng=rng)
        self._init_qat(weight_bits, lsq)

    def get_config(self):
        return {**super().get_config(), "weight_bits": self.weight_bits, "lsq": self.lsq}


@register_module
class QATConv2d(_QATWeights, nn.Conv2d):
    """nn.Conv2d trained through per-channel weight fake quantization."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1, groups=1,
                 bias=True, weight_bits=8, lsq=False, rng=None):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias, rng=rng)
        self._init_qat(weight_bits, lsq)

    def get_config(self):
        return {**super().get_config(), "weight_bits": self.weight_bits, "lsq": self.lsq}


def prepare_qat(model: nn.Sequential, *, weight_bits: int = 8, act_bits: int = 8, lsq: bool = False) -> nn.Sequential:
    """A trainable copy of ``model`` with fake quantization inserted (BatchNorm folded).
    Bits 2 to 8 (the integer layers hold int8 / uint8 codes)."""
    _check_sequential(model)
    check_int(weight_bits, "weight_bits", min_value=2, max_value=8)
    check_int(act_bits, "act_bits", min_value=2, max_value=8)
    mods = [FakeQuantize(act_bits, lsq)]
    for kind, name, m, relu in _units(model):
        if kind != "layer":
            mods.append(m)
            continue
        cls = QATConv2d if isinstance(m, nn.Conv2d) else QATLinear
        q = cls(**m.get_config(), weight_bits=weight_bits, lsq=lsq)
        q.weight.data = m.weight.data.copy()
        if m.bias is not None:
            q.bias.data = m.bias.data.copy()
        if lsq:
            q._init_qat(weight_bits, lsq)  # steps from the trained weights
        mods.append(q)
        if relu:
            mods.append(nn.ReLU())
        mods.append(FakeQuantize(act_bits, lsq))
    return nn.Sequential(*mods).train()


def convert_qat(model: nn.Sequential, *, rule: str = "float") -> nn.Sequential:
    """The integer model of a trained :func:`prepare_qat` model."""
    _check_sequential(model)
    layers = list(model)
    if not layers or not isinstance(layers[0], FakeQuantize):
        raise ArgumentError("model: expected a model made by prepare_qat (it starts with a FakeQuantize)")
    fq = layers[0]
    never = [i for i, m in enumerate(layers) if isinstance(m, FakeQuantize) and not m.initialized[0]]
    if never:
        raise ArgumentError(f"model: fake quantizers {never} never saw data; train (or run) the QAT model "
                            "in training mode before converting")
    act_bits = fq.bits
    cur_qp = fq.qparams()
    out = [_stub(QuantizeStub(act_bits), (float(cur_qp.scale), int(cur_qp.zero_point)))]
    i = 1
    while i < len(layers):
        m = layers[i]
        if isinstance(m, (QATLinear, QATConv2d)):
            relu = i + 1 < len(layers) and isinstance(layers[i + 1], nn.ReLU)
            fq = layers[i + 2 if relu else i + 1]
            oq = fq.qparams()
            out.append(_integer_layer(m, relu, rule, m.weight_bits, act_bits,
                                      (float(cur_qp.scale), int(cur_qp.zero_point)),
                                      (float(oq.scale), int(oq.zero_point)), weight_qp=m.weight_qparams()))
            cur_qp = oq
            i += 3 if relu else 2
        elif isinstance(m, nn.MaxPool2d):
            out.append(QuantizedMaxPool2d(m.kernel_size, m.stride, m.padding))
            i += 1
        elif isinstance(m, (nn.Flatten, nn.Dropout)):
            if isinstance(m, nn.Flatten):
                out.append(nn.Flatten())
            i += 1
        else:
            raise ArgumentError(f"model: layer {i} ({type(m).__name__}) has no integer form")
    out.append(_stub(DequantizeStub(), (float(cur_qp.scale), int(cur_qp.zero_point))))
    return nn.Sequential(*out).eval()
