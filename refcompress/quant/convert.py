"""Post-training quantization of a model: BN folding, calibration, conversion.

* :func:`fold_batchnorm` - Conv2d / Linear followed by BatchNorm becomes one layer:
  w' = w * gamma / sqrt(var + eps) (per output channel),
  b' = (b - mean) * gamma / sqrt(var + eps) + beta.
* :func:`quantize_static` - calibrate activation ranges on data (observers on every
  quantized layer's input and output), then replace the float chain by integer layers:
  uint8 activations, int8 per-channel weights, int32 bias, requantization by either rule,
  ReLU fused through the output range.  Layers named in ``exclude`` stay float between a
  DequantizeStub and a QuantizeStub.  ``weight_bits`` sets per-layer bit widths (2-8).
* :func:`quantize_weight_only` - b-bit weights (per channel or group-wise), float compute.
* :func:`quantize_dynamic` - Linear layers quantize their activations per batch.

Models are :class:`refcompress.nn.Sequential` chains (as the reference models are); a
layer the converter cannot express in integers is refused with its name, unless excluded.
"""

from __future__ import annotations

import numpy as np

from .. import nn
from .._validation import check_array, check_choice, check_int
from ..errors import ArgumentError, DTypeError, OverflowRiskError
from ..kernels.qgemm import k_bound
from .modules import (
    DequantizeStub,
    DynamicQuantizedLinear,
    QuantizedConv2d,
    QuantizedLinear,
    QuantizedMaxPool2d,
    QuantizedReLU,
    QuantizeStub,
    WeightOnlyConv2d,
    WeightOnlyLinear,
    quantize_bias,
)
from .observers import MinMaxObserver
from .qparams import QParams, calibrate, quantize
from .spec import QuantSpec


def clone(model: nn.Module) -> nn.Module:
    """An independent copy (architecture through its spec, then the state dict)."""
    m = nn.from_spec(nn.to_spec(model))
    m.load_state_dict(model.state_dict())
    return m.train(model.training)


def _check_sequential(model, name="model"):
    if not isinstance(model, nn.Sequential):
        raise DTypeError(f"{name}: expected a refcompress.nn.Sequential chain, got {type(model).__name__}")
    return model


def _fold(m, bn):
    """Conv2d / Linear ``m`` with the eval-mode BatchNorm ``bn`` folded in (a new layer)."""
    inv = 1.0 / np.sqrt(bn.running_var.astype(np.float64) + bn.eps)
    gamma = bn.weight.data.astype(np.float64) if bn.weight is not None else 1.0
    beta = bn.bias.data.astype(np.float64) if bn.bias is not None else 0.0
    k = gamma * inv
    w = m.weight.data.astype(np.float64)
    b = m.bias.data.astype(np.float64) if m.bias is not None else np.zeros(w.shape[0])
    cfg = m.get_config()
    cfg["bias"] = True
    fused = type(m)(**cfg)
    fused.weight.data = (w * k.reshape((-1,) + (1,) * (w.ndim - 1))).astype(m.weight.dtype)
    fused.bias.data = ((b - bn.running_mean) * k + beta).astype(m.weight.dtype)
    return fused.eval()


def _units(model):
    """The chain as units (kind, name, module, fused_relu), BatchNorm folded into the
    Conv2d / Linear before it; names are the original model's child names."""
    layers = list(clone(_check_sequential(model)).eval().named_children())
    units = []
    i = 0
    while i < len(layers):
        name, m = layers[i]
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            if i + 1 < len(layers) and isinstance(layers[i + 1][1], (nn.BatchNorm1d, nn.BatchNorm2d)):
                m = _fold(m, layers[i + 1][1])
                i += 1
            relu = i + 1 < len(layers) and isinstance(layers[i + 1][1], nn.ReLU)
            units.append(("layer", name, m, relu))
            i += 2 if relu else 1
        else:
            if any(True for _ in m.parameters()) and not isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
                raise ArgumentError(
                    f"model: layer {name!r} ({type(m).__name__}) holds weights but is not a Conv2d / Linear; "
                    "it has no quantized form here (quantize before factoring or encoding)")
            units.append(("other", name, m, False))
            i += 1
    return units


def _rebuild(units):
    mods = []
    for _, _, m, relu in units:
        mods.append(m)
        if relu:
            mods.append(nn.ReLU())
    return nn.Sequential(*mods).eval()


def fold_batchnorm(model: nn.Sequential) -> nn.Sequential:
    """A copy of ``model`` with every BatchNorm that directly follows a Conv2d / Linear
    folded into it (eval-mode statistics).  Other BatchNorms are kept."""
    return _rebuild(_units(model))


def quantize_static(model: nn.Sequential, calibration, *, rule: str = "float", weight_bits=8,
                    act_bits: int = 8, per_channel: bool = True, observer=MinMaxObserver, exclude=(),
                    batch_size: int = 256) -> nn.Sequential:
    """Integer model from a float chain and calibration inputs (static PTQ).

    calibration : float32 array of model inputs (a few hundred samples suffice).
    rule        : "float" (ONNX) or "fixedpoint" (gemmlowp) requantization.
    weight_bits : int, or {layer name: bits} (others 8); weights symmetric per channel.
    act_bits    : activation bits (2-8, affine uint codes in [0, 2^act_bits - 1]).
    per_channel : one weight scale per output channel (default) or one per layer.
    observer    : an observer class from refcompress.quant.observers (per-tensor affine
                  activations: MinMax, MovingAverageMinMax, Percentile or MSE; HistogramKL
                  takes symmetric specs only and is refused).
    batch_size  : calibration inputs per forward (>= 1).
    exclude     : names of Conv2d / Linear layers to keep in float.
    """
    check_choice(rule, "rule", ("float", "fixedpoint"))
    x = check_array(calibration, "calibration", dtypes=[np.float32])
    units = _units(model)
    names = {u[1] for u in units if u[0] == "layer"}
    unknown = set(exclude) - names
    if unknown:
        raise ArgumentError(f"exclude: no Conv2d / Linear layers named {sorted(unknown)} (have {sorted(names)})")
    bits = weight_bits if isinstance(weight_bits, dict) else {n: weight_bits for n in names}
    bad = set(bits) - names
    if bad:
        raise ArgumentError(f"weight_bits: no Conv2d / Linear layers named {sorted(bad)}")
    for n, b in bits.items():  # integer layers hold int8 codes
        check_int(b, f"weight_bits[{n!r}]", min_value=2, max_value=8)
    check_int(act_bits, "act_bits", min_value=2, max_value=8)
    batch_size = check_int(batch_size, "batch_size", min_value=1)

    # Calibration: observe the model input and every unit's output (after a fused ReLU).
    act_spec = QuantSpec(act_bits, signed=False, symmetric=False, narrow_range=False)
    obs_in = observer(act_spec)
    obs_out = {u[1]: observer(act_spec) for u in units if u[0] == "layer"}
    for s in range(0, len(x), batch_size):
        h = x[s:s + batch_size]
        obs_in.observe(h)
        for kind, name, m, relu in units:
            h = m(h)
            if relu:
                h = np.maximum(h, 0)
            if kind == "layer":
                obs_out[name].observe(h)
    qp_in = obs_in.qparams()

    out = []
    cur = (float(qp_in.scale), int(qp_in.zero_point))  # qparams of the integer stream
    in_float = True
    for kind, name, m, relu in units:
        if kind == "layer" and name not in exclude:
            if in_float:
                out.append(_stub(QuantizeStub(act_bits), cur))
                in_float = False
            oq = obs_out[name].qparams()
            out.append(_integer_layer(m, relu, rule, bits.get(name, 8), act_bits, cur,
                                      (float(oq.scale), int(oq.zero_point)), per_channel=per_channel, name=name))
            cur = (float(oq.scale), int(oq.zero_point))
        elif kind == "layer":
            if not in_float:
                out.append(_stub(DequantizeStub(), cur))
                in_float = True
            out.append(m)
            if relu:
                out.append(nn.ReLU())
            oq = obs_out[name].qparams()
            cur = (float(oq.scale), int(oq.zero_point))
        elif isinstance(m, (nn.Dropout,)):
            continue
        elif in_float:
            out.append(m)
        else:
            out.append(integer_form(m, cur[1], name, hint="; add the layer before it to exclude"))
    if not in_float:
        out.append(_stub(DequantizeStub(), cur))
    return nn.Sequential(*out).eval()


def integer_form(m, zero_point: int, name, hint: str = ""):
    """The layer without weights that acts on the integer stream (codes with zero point
    ``zero_point``) in place of float ``m``: max pooling and flattening of the codes, ReLU
    as max(q, zero_point), Dropout as None (dropped: the identity at inference).  Anything
    else raises ArgumentError naming layer ``name`` (``hint`` is appended)."""
    if isinstance(m, nn.Dropout):
        return None
    if isinstance(m, nn.MaxPool2d):
        return QuantizedMaxPool2d(m.kernel_size, m.stride, m.padding)
    if isinstance(m, nn.Flatten):
        return nn.Flatten()
    if isinstance(m, nn.ReLU):
        # not fused (something stands between it and its layer): clamp the codes at the
        # zero point, exactly relu of the dequantized value
        return QuantizedReLU(zero_point)
    raise ArgumentError(f"model: layer {name!r} ({type(m).__name__}) has no integer form{hint}")


def _stub(stub, qp):
    stub.scale = np.array([qp[0]], np.float32)
    stub.zero_point = np.array([qp[1]], np.int32)
    return stub


def _integer_layer(m, relu, rule, bits, act_bits, in_qp, out_qp, weight_qp=None, per_channel=True, name=None):
    """The integer layer for float ``m`` (called ``name`` in messages); weights by symmetric
    min-max (per channel or per layer) unless ``weight_qp`` (e.g. learned by QAT) is given.
    Raises OverflowRiskError when its int32 bias or accumulation cannot hold the values."""
    w = m.weight.data.astype(np.float32)
    if weight_qp is None:
        spec = QuantSpec(bits, granularity="channel", axis=0) if per_channel else QuantSpec(bits)
        weight_qp = calibrate(w, spec)
    qp = weight_qp
    wq = quantize(w, qp)
    cfg = {k: v for k, v in m.get_config().items() if k not in ("weight_bits", "lsq")}  # QAT twins' extras
    cfg.update(rule=rule, relu=relu, bias=m.bias is not None, act_bits=act_bits,
               per_channel=qp.spec.granularity == "channel")
    layer = (QuantizedConv2d if isinstance(m, nn.Conv2d) else QuantizedLinear)(**cfg)
    bq = None
    if m.bias is not None:
        _check_bias_fits(m, name, in_qp, qp.scale, wq)
        bq = quantize_bias(m.bias.data, in_qp[0], qp.scale)
    return layer.set_quantized(wq, qp.scale, bq, in_qp, out_qp).eval()


def _check_bias_fits(m, name, in_qp, weight_scale, wq):
    """Refuse a layer whose b / (s_x s_w) is beyond int32, or whose int32 accumulation
    sum (x - z_x) w_q + b_q could overflow (the kernels' k_bound)."""
    # quantize_bias would saturate the first silently, and the kernels refuse both only at
    # the first forward, with a bound that says nothing about the cause (a tiny s_x s_w)
    s = np.float64(in_qp[0]) * np.asarray(weight_scale, np.float64)
    ratio = np.abs(np.asarray(m.bias.data, np.float64) / s)
    worst = float(ratio.max()) if ratio.size else 0.0
    why = ("the input and weight scales are too small for the bias (a calibration range much narrower "
           "than the bias: calibrate on representative data, or keep the layer in float)")
    if not worst <= 2**31 - 1:
        raise OverflowRiskError(f"model: layer {name!r}: bias / (s_x s_w) reaches {worst:.3g}, beyond int32 "
                                f"(|b_q| <= 2^31 - 1): {why}")
    k = int(np.prod(wq.shape[1:]))  # the accumulation length: inputs (per group) x kernel size
    max_w = int(np.abs(wq.astype(np.int64)).max()) if wq.size else 0
    bound = k_bound(np.uint8, int(in_qp[1]), max_w, int(np.rint(worst)))
    if k > bound:
        raise OverflowRiskError(f"model: layer {name!r}: the int32 accumulation of {k} products plus the bias "
                                f"(max|b_q| = {worst:.3g}) could overflow (at most {max(bound, 0)} products "
                                f"fit): {why}")


def _replace(model, make, exclude, types):
    units = _units(model)
    names = {n for k, n, m, _ in units if isinstance(m, types)}
    unknown = set(exclude) - names
    if unknown:
        raise ArgumentError(f"exclude: no quantizable layers named {sorted(unknown)} (have {sorted(names)})")
    return _rebuild([(k, n, make(m) if isinstance(m, types) and n not in exclude else m, r)
                     for k, n, m, r in units])


def quantize_weight_only(model: nn.Sequential, bits: int = 8, *, group_size=None, symmetric=True,
                         exclude=()) -> nn.Sequential:
    """A copy with Conv2d / Linear weights stored as ``bits``-bit integers (per output
    channel, or per ``group_size`` inputs of each row; symmetric signed codes, or unsigned
    codes with a zero point per scale when ``symmetric=False``, which needs bits <= 8: the
    zero points are stored as uint8), activations float."""

    if group_size is not None:
        check_int(group_size, "group_size", min_value=1)

    def make(m):
        cfg = m.get_config()
        cls = WeightOnlyConv2d if isinstance(m, nn.Conv2d) else WeightOnlyLinear
        layer = cls(**cfg, bits=bits, group_size=group_size, symmetric=symmetric)
        return layer.set_weight(m.weight.data, None if m.bias is None else m.bias.data).eval()

    return _replace(model, make, exclude, (nn.Conv2d, nn.Linear))


def quantize_dynamic(model: nn.Sequential, *, exclude=()) -> nn.Sequential:
    """A copy whose Linear layers run int8 x uint8 with activations quantized per batch."""

    def make(m):
        layer = DynamicQuantizedLinear(m.in_features, m.out_features, m.bias is not None)
        w = m.weight.data.astype(np.float32)
        qp = calibrate(w, QuantSpec(8, granularity="channel", axis=0))
        layer.weight_q = quantize(w, qp)
        layer.weight_scale = qp.scale.astype(np.float32)
        if m.bias is not None:
            layer.bias = m.bias.data.astype(np.float32).copy()
        return layer.eval()

    return _replace(model, make, exclude, (nn.Linear,))


# ---- data-free and activation-aware weight corrections ------------------------------------------


def cross_layer_equalize(model: nn.Sequential, iterations: int = 4) -> nn.Sequential:
    """Cross-layer equalization over a chain (Nagel et al. 2019, sec. 4.1), BatchNorm folded.

    Equalizes every pair of consecutive Conv2d / Linear layers where the first has a fused
    ReLU and only max pooling / flattening stand between them (both commute with a
    positive per-channel scale; a flattened channel scales its block of inputs).  A few
    sweeps converge (the paper iterates too).  The function of the model is unchanged.
    """
    from .equalization import equalize_pair

    units = _units(model)
    idx = [i for i, u in enumerate(units) if u[0] == "layer"]
    for _ in range(int(iterations)):
        for a, b in zip(idx, idx[1:]):
            first, second = units[a][2], units[b][2]
            between = [u[2] for u in units[a + 1:b]]
            if not units[a][3] or not all(isinstance(m, (nn.MaxPool2d, nn.Flatten)) for m in between):
                continue
            c = first.weight.shape[0]
            w2 = second.weight.data
            # a Linear after Flatten sees each channel as a block of inputs: view it [O, C, block]
            w2v = w2.reshape(w2.shape[0], c, -1) if w2.ndim == 2 else w2
            if w2v.shape[1] != c:
                continue
            w1n, b1n, w2n, _ = equalize_pair(first.weight.data, None if first.bias is None else first.bias.data, w2v)
            first.weight.data = w1n
            if b1n is not None:
                first.bias.data = b1n
            second.weight.data = w2n.reshape(w2.shape)
    return _rebuild(units)


def quantize_weights_corrected(model: nn.Sequential, calibration, bits: int, *, per_channel: bool = False,
                               adaround: bool = False, bias_correction: bool = False,
                               adaround_iters: int = 300, batch_size: int = 256) -> nn.Sequential:
    """A float model whose Conv2d / Linear weights are replaced by their b-bit quantized
    values (symmetric; per tensor unless ``per_channel``), rounded to nearest or by
    AdaRound on the layer's calibration inputs, optionally with empirical bias correction
    (b -= (W~ - W) E[x]).  Each layer's calibration inputs x (AdaRound's and E[x]) are the
    float model's.  The way these methods are evaluated in their papers: weights
    quantized, activations float."""
    from .adaround import adaround as _adaround
    from .equalization import bias_correction as _bias_correction
    from .qparams import dequantize

    x = check_array(calibration, "calibration", dtypes=[np.float32])
    check_int(batch_size, "batch_size", min_value=1)
    units = _units(model)
    spec = QuantSpec(bits, granularity="channel", axis=0) if per_channel else QuantSpec(bits)
    h = x
    for kind, name, m, relu in units:
        if kind == "layer":
            w = m.weight.data.astype(np.float32)
            qp = calibrate(w, spec)
            # a grouped conv is one independent layer per group: its output rows see only
            # its own input channels (the whole layer for Linear and groups=1)
            parts = _groups(m, w)
            if adaround:
                s = np.broadcast_to(np.asarray(qp.scale, np.float64).reshape(-1), (w.shape[0],))
                codes = np.empty((w.shape[0], w[0].size), np.int64)
                for rows, chans in parts:
                    cols = _layer_inputs(m, h[:, chans])  # [in/groups * kh * kw, samples]
                    wg = w[rows].reshape(codes[rows].shape[0], -1)
                    codes[rows] = _adaround(wg, cols, s[rows], qmin=spec.qmin, qmax=spec.qmax,
                                            iters=adaround_iters, lr=1e-2)
                wq = (codes * s[:, None]).reshape(w.shape).astype(np.float32)
            else:
                wq = dequantize(quantize(w, qp), qp)
            # the next layer's input comes from the float layer, before its bias is
            # corrected: every layer's correction uses E[x] of the float model
            h_next = m(h)
            if bias_correction:
                mean = (h.mean(axis=(0, 2, 3)) if h.ndim == 4 else h.mean(axis=0)).astype(np.float64)
                corr = np.empty(w.shape[0])
                for rows, chans in parts:
                    corr[rows] = _bias_correction(w[rows], wq[rows], mean[chans])
                if m.bias is None:
                    raise ArgumentError(f"model: layer {name!r} has no bias to correct")
                m.bias.data = (m.bias.data + corr).astype(m.bias.dtype)
            h = h_next
            m.weight.data = wq.astype(m.weight.dtype)
            if relu:
                h = np.maximum(h, 0)
        else:
            h = m(h)
    return _rebuild(units)


def _groups(m, w):
    """[(output rows, input channels)] of each group of layer ``m`` (weight ``w``), as slices."""
    if not isinstance(m, nn.Conv2d):
        return [(slice(None), slice(None))]
    g = m.groups
    o, c = w.shape[0] // g, w.shape[1]
    return [(slice(i * o, (i + 1) * o), slice(i * c, (i + 1) * c)) for i in range(g)]


def _layer_inputs(m, h, max_samples: int = 4096):
    """The layer's input columns [in*kh*kw, n] (im2col for convolutions), subsampled."""
    from .. import _conv

    if isinstance(m, nn.Conv2d):
        cols = _conv.im2col(h, m.kernel_size, m.stride, m.padding, m.dilation)  # [N, K, P]
        cols = cols.transpose(1, 0, 2).reshape(cols.shape[1], -1)
    else:
        cols = h.reshape(h.shape[0], -1).T
    if cols.shape[1] > max_samples:
        pick = np.random.default_rng(0).choice(cols.shape[1], max_samples, replace=False)
        cols = cols[:, np.sort(pick)]
    return cols.astype(np.float64)
