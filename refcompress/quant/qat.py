"""Quantization-aware training: fake quantization in the forward, straight-through
gradients in the backward, then conversion to the integer model.

Two entry points.  ``prepare_qat(model)`` (a :class:`refcompress.nn.Sequential` chain)
folds BatchNorm, replaces each Conv2d / Linear by a QAT twin whose weights are
fake-quantized (symmetric, per output channel) on every forward, and puts a
:class:`FakeQuantize` on the model input and on every layer's output (after a fused
ReLU).  The model trains with the ordinary nn toolkit (``nn.fit``); ``convert_qat`` then
builds the integer model of :mod:`refcompress.quant.modules` from the trained weights and
the activation ranges the fake quantizers settled on, so the simulation and the integer
model agree (see examples/quantize_digits.py for the measured agreement).

``prepare_qat_linears(model, names)`` works on any Module (a BERT, say): each named
``nn.Linear`` becomes a :class:`QATInputLinear` -- a :class:`FakeQuantize` on its input and a
:class:`QATLinear` -- which trains through exactly the grid a static
:class:`refcompress.quant.w8a8.W8A8Linear` computes on (uint8 affine per-tensor inputs,
int8 symmetric narrow-range weights per output row); ``convert_qat_linears`` swaps each for
that W8A8Linear, running on the integer qgemm.

Activation ranges are tracked with a moving-average min / max (Jacob et al. 2018, sec. 3)
or, with ``lsq=True``, learned as step sizes (Esser et al. 2020; see
:mod:`refcompress.quant.lsq`) for both activations and per-channel weights.
"""

from __future__ import annotations

import copy

import numpy as np

from .. import nn
from .._validation import check_int
from ..errors import ArgumentError, DTypeError
from ..nn.container import Chain
from ..nn.module import Module, Parameter
from ..nn.spec import register_module
from .convert import _check_sequential, _integer_layer, _rebuild, _stub, _units, integer_form
from .lsq import lsq_init_step
from .modules import DequantizeStub, QuantizeStub
from .observers import MovingAverageMinMaxObserver
from .qparams import QParams, calibrate, choose_qparams, fake_quantize, quantize
from .spec import QuantSpec
from .w8a8 import ACTIVATION_SPEC, W8A8Linear


def _act_spec(bits):
    return QuantSpec(bits, signed=False, symmetric=False, narrow_range=False)


@register_module
class FakeQuantize(Module):
    """Activation fake quantization: x_hat = dequant(quant(x)) with affine uint ``bits``.

    Training: the range follows a moving average of batch min / max (or, with ``lsq``, a
    learned step with a fixed zero point) and the backward passes gradients only where x
    was inside the range (STE).  Eval: the range is frozen.

    With ``lsq`` the scale is s = |step| (1 if the step is 0), the zero point
    z = clip(rint(-range_min / s), qmin, qmax), and the step's gradient is d/ds times
    sign(step): a step that an update made negative quantizes as its magnitude does.
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
            # the scale is |step|, and the zero point must come from the same number: from the
            # signed step a negative one flipped it to the other end of the range
            s = np.float32(abs(self.step.data[0])) or np.float32(1.0)
            z = int(np.clip(np.rint(-self.range_min[0] / s), spec.qmin, spec.qmax))
            return QParams(s, np.int32(z), spec)
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
            sign = -1.0 if self.step.data[0] < 0 else 1.0  # d|step| / d step
            self.step.accumulate_grad(np.array([np.sum(grad_out * ds) * g * sign], np.float32))
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
            sign = np.where(self.weight_step.data < 0, -1.0, 1.0)  # the scales are |step|: d|step| / d step
            self.weight_step.accumulate_grad(
                (np.sum(g_new * ds, axis=tuple(range(1, w.ndim))) * g * sign).astype(np.float32))
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
                                      (float(oq.scale), int(oq.zero_point)), weight_qp=m.weight_qparams(),
                                      name=str(i)))
            cur_qp = oq
            i += 3 if relu else 2
        else:
            # quantize_static's rule for the layers between (pooling, flattening, an unfused
            # ReLU, Dropout)
            q = integer_form(m, int(cur_qp.zero_point), str(i))
            if q is not None:
                out.append(q)
            i += 1
    out.append(_stub(DequantizeStub(), (float(cur_qp.scale), int(cur_qp.zero_point))))
    return nn.Sequential(*out).eval()


# ---- any Module: chosen Linear layers -> fake-quantized input + weights -> W8A8Linear ------------


@register_module
class QATInputLinear(Chain):
    """x -> ``input_quant`` (:class:`FakeQuantize`, affine uint ``act_bits``, one range per
    tensor) -> ``linear`` (:class:`QATLinear`, symmetric narrow-range int ``weight_bits``
    per output row): the forward of a static :class:`~refcompress.quant.w8a8.W8A8Linear`
    simulated in float, with straight-through gradients (Jacob et al. 2018, sec. 3).  At 8
    bits both grids are W8A8Linear's own (``ACTIVATION_SPEC``, ``WEIGHT_SPEC``), so
    :func:`convert_qat_linears` keeps every code the training saw.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, weight_bits: int = 8,
                 act_bits: int = 8, lsq: bool = False, averaging_constant: float = 0.01, rng=None):
        super().__init__()
        self.input_quant = FakeQuantize(act_bits, lsq, averaging_constant)
        self.linear = QATLinear(in_features, out_features, bias, weight_bits, lsq, rng=rng)

    def get_config(self):
        lin, fq = self.linear, self.input_quant
        return {"in_features": lin.in_features, "out_features": lin.out_features, "bias": lin.bias is not None,
                "weight_bits": lin.weight_bits, "act_bits": fq.bits, "lsq": lin.lsq,
                "averaging_constant": fq.averaging_constant}


def _linear_names(model: Module, names) -> list:
    if names is None:
        found = [n for n, m in model.named_modules() if type(m) is nn.Linear]
        if not found:
            raise ArgumentError(f"model: a {type(model).__name__} with no nn.Linear submodule to prepare")
        # named_modules lists a module used at two paths once: replacing it at that path
        # alone would leave the other path float, so such a model is refused by name
        paths = {}

        def walk(m, prefix):
            for name, child in m._modules.items():
                path = f"{prefix}.{name}" if prefix else name
                paths.setdefault(id(child), []).append(path)
                walk(child, path)

        walk(model, "")
        shared = [paths[i] for i in (id(model.get_submodule(n)) for n in found) if len(paths.get(i, ())) > 1]
        if shared:
            raise ArgumentError(f"model: the nn.Linear at {shared[0]} is one module used at several paths; "
                                "QAT would quantize it at one path only (give it separate Linears)")
        return found
    found = model.get_submodules(names)
    if not found:
        raise ArgumentError("names: expected at least one module name, got none")
    for n, m in found.items():
        # A subclass of Linear (a QAT twin, a shared or masked layer) computes something
        # else, which the twin would silently drop.
        if type(m) is not nn.Linear:
            raise ArgumentError(f"names: {n!r} is a {type(m).__name__}, expected an nn.Linear")
    return list(found)


def prepare_qat_linears(model: Module, names=None, *, weight_bits: int = 8, act_bits: int = 8,
                        lsq: bool = False) -> Module:
    """A trainable deep copy of ``model`` (training mode) whose Linear layers ``names``
    (dotted paths; default: every ``nn.Linear``) are :class:`QATInputLinear` layers with
    the same weights.  ``model`` is untouched.  Bits 2 to 8; :func:`convert_qat_linears`
    needs ``act_bits=8`` (any ``weight_bits``: narrower codes are int8 codes).

    Input ranges start from the first training batch each layer sees and follow a moving
    average of batch min / max (or, with ``lsq``, learned steps): run the copy in training
    mode on representative data before converting.  Forward is float32 only.
    """
    if not isinstance(model, Module):
        raise DTypeError(f"model: expected a refcompress.nn Module, got {type(model).__name__}")
    check_int(weight_bits, "weight_bits", min_value=2, max_value=8)
    check_int(act_bits, "act_bits", min_value=2, max_value=8)
    names = _linear_names(model, names)
    out = copy.deepcopy(model)
    for n in names:
        lin = out.get_submodule(n)
        # a seeded generator: the twin's random init is overwritten, and must not advance
        # the shared generator other code draws from
        q = QATInputLinear(lin.in_features, lin.out_features, lin.bias is not None, weight_bits, act_bits, lsq,
                           rng=np.random.default_rng(0))
        q.linear.weight.data = lin.weight.data.copy()
        if lin.bias is not None:
            q.linear.bias.data = lin.bias.data.copy()
        if lsq:
            q.linear._init_qat(weight_bits, lsq)  # steps from the copied weights
        if not n:
            return q.train()
        out.set_submodule(n, q)
    return out.train()


def w8a8_from_qat(layer: QATInputLinear) -> W8A8Linear:
    """The static W8A8Linear that ``layer`` simulates: its weight codes are the QAT weight
    codes (scales from :meth:`QATLinear.weight_qparams`), its (s_a, z_a) the input
    quantizer's frozen range."""
    if not isinstance(layer, QATInputLinear):
        raise DTypeError(f"layer: expected a QATInputLinear, got {type(layer).__name__}")
    fq, lin = layer.input_quant, layer.linear
    if not fq.initialized[0]:
        raise ArgumentError("layer: its input quantizer never saw data; run it in training mode before converting")
    if fq.bits != ACTIVATION_SPEC.bits:
        raise ArgumentError(f"layer: quantizes its input to {fq.bits} bits; W8A8Linear quantizes to "
                            f"{ACTIVATION_SPEC.bits} (prepare with act_bits={ACTIVATION_SPEC.bits})")
    wq = lin.weight_qparams()
    aq = fq.qparams()
    out = W8A8Linear(lin.in_features, lin.out_features, lin.bias is not None, activation="static")
    out.weight_q = quantize(lin.weight.data.astype(np.float32), wq).astype(np.int8)
    out.weight_scale = np.asarray(wq.scale, np.float32).copy()
    if lin.bias is not None:
        out.bias = lin.bias.data.astype(np.float32)
    out.input_scale = np.asarray(aq.scale, np.float32).reshape(())
    out.input_zero_point = np.asarray(aq.zero_point, np.int32).reshape(())
    return out.eval()


def convert_qat_linears(model: Module) -> Module:
    """A deep copy of ``model`` (eval mode) with every :class:`QATInputLinear` replaced by
    its static :class:`~refcompress.quant.w8a8.W8A8Linear` (:func:`w8a8_from_qat`).

    The codes are the ones the fake-quant model computes on; only float rounding differs:
    the fake-quant layer sums float32 products ((q_a - z_a) s_a)(q_w s_w) in BLAS order,
    the integer layer sums (q_a - z_a) q_w exactly and scales once by float32(s_a s_w), so
    one layer's outputs differ by at most about (K + 8) 2^-24 sum_j |x_hat_j w_hat_nj|
    (tests/quant/test_qat_linears.py derives it).  Through a deep model such a difference
    can move a later layer's input across a rounding boundary, one code step; the whole
    model then agrees to the float noise of a step, not bit for bit.
    """
    if not isinstance(model, Module):
        raise DTypeError(f"model: expected a refcompress.nn Module, got {type(model).__name__}")
    found = [(n, m) for n, m in model.named_modules() if isinstance(m, QATInputLinear)]
    if not found:
        raise ArgumentError(f"model: a {type(model).__name__} with no QATInputLinear layer; "
                            f"make it with prepare_qat_linears")
    never = [n for n, m in found if not m.input_quant.initialized[0]]
    if never:
        raise ArgumentError(f"model: the input quantizers of {never} never saw data; run (train) the model in "
                            f"training mode before converting")
    narrow = sorted({m.input_quant.bits for _, m in found} - {ACTIVATION_SPEC.bits})
    if narrow:
        raise ArgumentError(f"model: its layers quantize inputs to {narrow} bits; W8A8Linear quantizes to "
                            f"{ACTIVATION_SPEC.bits} (prepare with act_bits={ACTIVATION_SPEC.bits})")
    if found[0][0] == "":
        return w8a8_from_qat(model)
    out = copy.deepcopy(model)
    for n, _ in found:
        out.set_submodule(n, w8a8_from_qat(out.get_submodule(n)))
    return out.eval()
