"""Quantized layers that really run in integers, registered for save / load.

A statically quantized model is a chain of integer tensors:

    x (float32) -> QuantizeStub -> uint8 -> QuantizedConv2d -> uint8 -> ... -> DequantizeStub -> float32

Each integer layer holds int8 weights (symmetric, per output channel), an int32 bias
b_q = round(b / (s_in s_w)), and the qparams of its input and output; it computes the exact
int32 accumulation (a - z_in)(w - 0) + b_q with refcompress.kernels and requantizes by the
chosen rule (ONNX float scale or gemmlowp fixed point) with the multiplier
M = s_in s_w / s_out.  A fused ReLU is the output range [z_out, 255].  Max pooling and
flattening act on the integer codes directly (max commutes with the monotone dequantization).

Also here: WeightOnlyLinear / WeightOnlyConv2d (int8 / int4 / group-wise weights stored
packed, float activations) and DynamicQuantizedLinear (activations quantized per batch at
run time, output float).
"""

from __future__ import annotations

import operator

import numpy as np

from .. import _conv, kernels
from .._validation import check_array, check_choice, check_int
from ..errors import ArgumentError, NotDifferentiableError, ShapeError
from ..nn import functional as F
from ..nn.module import Module
from ..nn.spec import register_module
from .packing import pack_bits, unpack_bits
from .rotation import hadamard_order, hadamard_rotate, random_signs
from .spec import QuantSpec

RULES = ("float", "fixedpoint")


def quantize_bias(bias, input_scale, weight_scale) -> np.ndarray:
    """b_q = round_half_even(b / (s_in s_w)) saturated to int32 (Jacob et al. 2018, sec. 2.4)."""
    s = np.float64(input_scale) * np.asarray(weight_scale, np.float64)
    return np.clip(np.rint(np.asarray(bias, np.float64) / s), -(2**31), 2**31 - 1).astype(np.int32)


def requant_multiplier(input_scale, weight_scale, output_scale) -> np.ndarray:
    """M = s_in s_w / s_out per output channel (float64; each rule rounds it its own way)."""
    return np.float64(input_scale) * np.asarray(weight_scale, np.float64) / np.float64(output_scale)


class _Cached:
    """A value derived from buffers (packed weights, the requantization spec), rebuilt only
    when one of the buffers is replaced (load_state_dict installs new arrays)."""

    def __init__(self):
        self.src = None
        self.value = None

    # A copy or a pickle starts empty and rebuilds from its own buffers on first use: the
    # value may hold C pointers (packed weights, epilogue structs), which cannot be copied,
    # and would point into the original's arrays anyway.
    def __deepcopy__(self, memo):
        return _Cached()

    def __reduce__(self):
        return (_Cached, ())

    def get(self, src, build):
        kept = self.src
        same = kept is not None and (kept is src if type(src) is not tuple
                                     else len(src) == len(kept) and all(map(operator.is_, src, kept)))
        if not same:
            self.src, self.value = src, build(src)
        return self.value


@register_module
class QuantizeStub(Module):
    """float32 -> uint8 codes with the model input's qparams (ONNX QuantizeLinear), in
    [0, 2^bits - 1] (bits < 8: sub-byte activations held in uint8)."""

    fixed_float_dtype = np.float32  # float32 kernels and scales: Module.to refuses other dtypes

    def __init__(self, bits: int = 8):
        super().__init__()
        self.bits = int(bits)
        self.register_buffer("scale", np.ones(1, np.float32))
        self.register_buffer("zero_point", np.zeros(1, np.int32))

    def forward(self, x):
        return kernels.quantize(np.asarray(x, np.float32), float(self.scale[0]), int(self.zero_point[0]),
                                dtype=np.uint8, qmax=2**self.bits - 1)

    def get_config(self):
        return {"bits": self.bits}


@register_module
class DequantizeStub(Module):
    """uint8 codes -> float32 (ONNX DequantizeLinear)."""

    fixed_float_dtype = np.float32  # float32 kernels and scales: Module.to refuses other dtypes

    def __init__(self):
        super().__init__()
        self.register_buffer("scale", np.ones(1, np.float32))
        self.register_buffer("zero_point", np.zeros(1, np.int32))

    def forward(self, q):
        return kernels.dequantize(q, float(self.scale[0]), int(self.zero_point[0]))


class _QuantizedLayer(Module):
    """Shared state of QuantizedLinear / QuantizedConv2d (buffers shaped by the config)."""

    fixed_float_dtype = np.float32  # float32 kernels and scales: Module.to refuses other dtypes

    def _init_state(self, out_channels, weight_shape, bias, rule, relu, act_bits, per_channel):
        self.rule = check_choice(rule, "rule", RULES)
        self.relu = bool(relu)
        self.act_bits = int(act_bits)
        self.per_channel = bool(per_channel)
        self.register_buffer("weight_q", np.zeros(weight_shape, np.int8))
        self.register_buffer("weight_scale", np.ones(out_channels if self.per_channel else 1, np.float32))
        if bias:
            self.register_buffer("bias_q", np.zeros(out_channels, np.int32))
        else:
            self.bias_q = None
        for name, dtype in (("input_scale", np.float32), ("input_zero_point", np.int32),
                            ("output_scale", np.float32), ("output_zero_point", np.int32)):
            self.register_buffer(name, np.ones(1, dtype) if dtype == np.float32 else np.zeros(1, dtype))
        self._packed = _Cached()
        self._spec = _Cached()

    def set_quantized(self, weight_q, weight_scale, bias_q, input_qp, output_qp):
        """Install integer weights and qparams (used by the converters)."""
        self.weight_q = np.ascontiguousarray(weight_q, np.int8)
        ws = np.asarray(weight_scale, np.float32).reshape(-1)
        self.weight_scale = (ws if self.per_channel else ws[:1]).copy()
        if bias_q is not None:
            self.bias_q = np.asarray(bias_q, np.int32)
        self.input_scale = np.array([input_qp[0]], np.float32)
        self.input_zero_point = np.array([input_qp[1]], np.int32)
        self.output_scale = np.array([output_qp[0]], np.float32)
        self.output_zero_point = np.array([output_qp[1]], np.int32)
        return self

    def _output(self):
        """The layer's Requantize spec (the same object at every call until a buffer it is
        derived from is replaced, so qgemm / qconv2d keep its validated form)."""
        b = self._buffers  # the registry itself: Module.__getattr__ costs ~0.5 us a name
        return self._spec.get((b["weight_scale"], b["input_scale"], b["output_scale"], b["output_zero_point"]),
                              self._build_output)

    def _build_output(self, _):
        ws = self.weight_scale if self.per_channel else np.full(self.weight_q.shape[0], self.weight_scale[0])
        m = requant_multiplier(self.input_scale[0], ws, self.output_scale[0])
        z = int(self.output_zero_point[0])
        return kernels.Requantize(m.astype(np.float32), z, np.uint8, self.rule, qmin=z if self.relu else 0,
                                  qmax=2**self.act_bits - 1)

    def backward(self, grad_out):
        raise NotDifferentiableError(
            f"{type(self).__name__} is an integer inference layer; fine-tune before converting (QAT)")


@register_module
class QuantizedLinear(_QuantizedLayer):
    """uint8 [N, in] -> uint8 [N, out]: requant((x - z_in) W_q^T + b_q) by qgemm."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, rule: str = "float",
                 relu: bool = False, act_bits: int = 8, per_channel: bool = True):
        super().__init__()
        self.in_features, self.out_features = int(in_features), int(out_features)
        self._init_state(self.out_features, (self.out_features, self.in_features), bias, rule, relu, act_bits,
                         per_channel)

    def forward(self, x):
        b = self._buffers
        pw = self._packed.get(b["weight_q"], self._pack)
        # bias_q is a buffer, or a plain attribute (None) without a bias: two dict lookups
        # instead of Module.__getattr__, which costs ~0.4 us after the failed normal lookup
        bias = b.get("bias_q", self.__dict__.get("bias_q"))
        return kernels.qgemm(x, pw, int(b["input_zero_point"][0]), bias=bias, output=self._output())

    @staticmethod
    def _pack(w):
        return kernels.pack_weights(np.ascontiguousarray(w.T))

    def get_config(self):
        return {"in_features": self.in_features, "out_features": self.out_features,
                "bias": self.bias_q is not None, "rule": self.rule, "relu": self.relu, "act_bits": self.act_bits,
                "per_channel": self.per_channel}


@register_module
class QuantizedConv2d(_QuantizedLayer):
    """uint8 [N, C, H, W] -> uint8 [N, O, OH, OW] by qconv2d (stride, padding, dilation, groups)."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1, groups=1,
                 bias: bool = True, rule: str = "float", relu: bool = False, act_bits: int = 8,
                 per_channel: bool = True):
        super().__init__()
        self.in_channels, self.out_channels, self.groups = int(in_channels), int(out_channels), int(groups)
        self.kernel_size = _conv.as_pair(kernel_size, "kernel_size", 1)
        self.stride = _conv.as_pair(stride, "stride", 1)
        self.padding = _conv.as_pair(padding, "padding", 0)
        self.dilation = _conv.as_pair(dilation, "dilation", 1)
        shape = (self.out_channels, self.in_channels // self.groups, *self.kernel_size)
        self._init_state(self.out_channels, shape, bias, rule, relu, act_bits, per_channel)

    def forward(self, x):
        b = self._buffers
        pw = self._packed.get(b["weight_q"], self._pack)
        return kernels.qconv2d(x, pw, int(b["input_zero_point"][0]), bias=self.bias_q, stride=self.stride,
                               padding=self.padding, dilation=self.dilation, output=self._output())

    def _pack(self, w):
        return kernels.pack_conv_weights(w, 0, self.groups)

    def get_config(self):
        return {"in_channels": self.in_channels, "out_channels": self.out_channels,
                "kernel_size": list(self.kernel_size), "stride": list(self.stride),
                "padding": list(self.padding), "dilation": list(self.dilation), "groups": self.groups,
                "bias": self.bias_q is not None, "rule": self.rule, "relu": self.relu, "act_bits": self.act_bits,
                "per_channel": self.per_channel}


@register_module
class QuantizedMaxPool2d(Module):
    """Max pooling of integer codes (exact: dequantization is monotone, so the max of the
    codes is the code of the max).  Padding uses the smallest code, which no window that
    contains a real element can select, like PyTorch's implicit -inf."""

    def __init__(self, kernel_size, stride=None, padding=0):
        super().__init__()
        self.kernel_size = _conv.as_pair(kernel_size, "kernel_size", 1)
        self.stride = _conv.as_pair(stride if stride is not None else kernel_size, "stride", 1)
        self.padding = _conv.as_pair(padding, "padding", 0)

    def forward(self, q):
        q = check_array(q, "q", dtypes=[np.uint8, np.int8], ndim=4)
        N, C = q.shape[:2]
        cols = _conv.im2col(q.reshape(N * C, 1, *q.shape[2:]), self.kernel_size, self.stride, self.padding,
                            1, pad_value=np.iinfo(q.dtype).min)
        oh = _conv.conv_output_size(q.shape[2], self.kernel_size[0], self.stride[0], self.padding[0])
        ow = _conv.conv_output_size(q.shape[3], self.kernel_size[1], self.stride[1], self.padding[1])
        return cols.max(axis=1).reshape(N, C, oh, ow)

    def get_config(self):
        return {"kernel_size": list(self.kernel_size), "stride": list(self.stride), "padding": list(self.padding)}


@register_module
class QuantizedReLU(Module):
    """ReLU on codes: max(q, z) is the code of relu(dequantize(q)) (z is the zero point)."""

    def __init__(self, zero_point: int = 0):
        super().__init__()
        self.zero_point = int(zero_point)

    def forward(self, q):
        q = check_array(q, "q", dtypes=[np.uint8, np.int8])
        return np.maximum(q, np.array(self.zero_point, q.dtype))

    def get_config(self):
        return {"zero_point": self.zero_point}


# ---- weight-only and dynamic -------------------------------------------------------------------


class _WeightOnly(Module):
    """Weights stored as b-bit integers (packed, so stored bytes are real) with per-channel
    or group-wise scales; dequantized once on first use for float compute.

    ``symmetric=True`` (default): signed narrow-range codes, zero point 0,
    w_hat = q s (2^b - 1 levels).  ``symmetric=False``: unsigned affine codes q in
    [0, 2^b - 1] with one zero point z per scale (a ``weight_zero_point`` uint8 buffer, so
    b <= 8: ``set_weight`` / ``set_quantized`` refuse more), w_hat = (q - z) s: all 2^b
    levels, and the grid need not be centred on 0 -- what GPTQ's and AWQ's reference
    implementations store for int4.

    Optionally a per-input-channel ``input_scale`` (float32 [in], AWQ's 1 / s) multiplies
    the input before the product, y = (x * input_scale) W_hat^T + b, when it is not folded
    into the previous op; it is a buffer, so it is saved and counted in the stored bytes.

    WeightOnlyLinear(..., rotate=True) also rotates the input by a randomized Hadamard
    transform Q = diag(input_signs) H / sqrt(in) (:mod:`refcompress.quant.rotation`) and
    stores W_hat ~ W Q: y = ((x Q) * input_scale) W_hat^T + b, which equals x W^T + b up to
    the quantization error, because Q is orthogonal.  ``input_signs`` (int8 +-1 [in], random
    from seed 0 unless set) is a buffer, saved with the layer.
    """

    fixed_float_dtype = np.float32  # float32 kernels and scales: Module.to refuses other dtypes

    def _init_state(self, weight_shape, bias, bits, group_size, n_inputs=None, input_scale=False,
                    symmetric=True):
        self.bits = int(bits)
        if not isinstance(symmetric, (bool, np.bool_)):
            raise ArgumentError(f"symmetric: expected True or False, got {symmetric!r}")
        self.symmetric = bool(symmetric)
        self.group_size = None if group_size is None else check_int(group_size, "group_size", min_value=1)
        self.weight_shape = tuple(int(s) for s in weight_shape)
        n = int(np.prod(self.weight_shape))
        rows = self.weight_shape[0]
        ns = rows if self.group_size is None else rows * (n // rows // self.group_size)
        self.register_buffer("weight_packed", np.zeros((n * self.bits + 7) // 8, np.uint8))
        self.register_buffer("weight_scale", np.ones(ns, np.float32))
        if not self.symmetric:
            self.register_buffer("weight_zero_point", np.zeros(ns, np.uint8))
        if bias:
            self.register_buffer("bias", np.zeros(rows, np.float32))
        else:
            self.bias = None
        self.n_inputs = int(n_inputs if n_inputs is not None else self.weight_shape[1])
        if input_scale:
            self.register_buffer("input_scale", np.ones(self.n_inputs, np.float32))
        else:
            self.input_scale = None
        self._dense = _Cached()

    def _check_affine_bits(self):
        """Refuse to store affine (``symmetric=False``) codes of more than 8 bits."""
        # The zero points live in a uint8 buffer (saved files hold it so, and must still
        # load): a 16-bit affine grid has zero points up to 65535, which would wrap.
        # The check is here, where codes are stored, not in __init__, so a saved layer
        # still loads as it always did.
        if not self.symmetric and self.bits > 8:
            raise ArgumentError(f"bits: symmetric=False stores one uint8 zero point per scale, so it needs "
                                f"bits <= 8, got bits={self.bits}; use symmetric=True for {self.bits}-bit weights")

    def spec(self) -> QuantSpec:
        form = {} if self.symmetric else dict(signed=False, symmetric=False, narrow_range=False)
        if self.group_size is None:
            return QuantSpec(self.bits, granularity="channel", axis=0, **form)
        return QuantSpec(self.bits, granularity="group", group_size=self.group_size, **form)

    def set_weight(self, w, bias=None):
        """Quantize float weights by round to nearest (per channel or group, this layer's
        :meth:`spec`) and store them packed (rotated first, W Q, if the layer rotates)."""
        from .qparams import calibrate, quantize

        self._check_affine_bits()
        w = np.asarray(w, np.float32)
        w2 = w.reshape(w.shape[0], -1)
        if getattr(self, "input_signs", None) is not None:
            w2 = hadamard_rotate(w2, self.input_signs)
        qp = calibrate(w2, self.spec())
        self.weight_packed = pack_bits(quantize(w2, qp), self.bits)
        self.weight_scale = qp.scale.reshape(-1).astype(np.float32)
        if not self.symmetric:
            self.weight_zero_point = qp.zero_point.reshape(-1).astype(np.uint8)
        if bias is not None:
            self.bias = np.asarray(bias, np.float32).copy()
        return self

    def set_quantized(self, codes, scale, bias=None, input_scale=None, zero_point=None, input_signs=None):
        """Store precomputed integer weights (e.g. from GPTQ or AWQ) exactly as given.

        codes       : the weight's shape [out, ...]; symmetric layer: int8 holding signed
                      b-bit values (w_hat = codes * scale); ``symmetric=False`` layer: uint8
                      holding unsigned b-bit values (w_hat = (codes - zero_point) * scale).
        scale       : float32 scales, [out] per channel or [out, n_groups] per group (as
                      this layer's ``group_size``), or the QParams GPTQ / AWQ returned (their
                      granularity must match, per channel along axis 0; a per-tensor scale
                      is repeated per row; their zero points are used, and must be 0 for a
                      symmetric layer).
        bias        : float32 [out] or None (keep the current bias).
        input_scale : float32 [in] or None: x is multiplied by it channel-wise before the
                      product (AWQ's 1 / s); registers the buffer if the layer had none.
        zero_point  : integers in [0, 2^b - 1], one per scale (``symmetric=False`` layers,
                      when ``scale`` is an array); ignored when ``scale`` is a QParams.
        input_signs : +-1 [in] or None (keep the current ones): the signs of the rotation
                      the codes were computed under (layers built with ``rotate=True``).
        """
        from .qparams import QParams

        self._check_affine_bits()
        rows = self.weight_shape[0]
        n_scales = self.weight_scale.shape[0]
        if isinstance(scale, QParams):
            sp = scale.spec
            zp = np.asarray(scale.zero_point)
            if self.symmetric and np.any(zp != 0):
                raise ArgumentError("scale: the layer stores symmetric codes (zero point 0); "
                                    "quantize with a symmetric QuantSpec or build the layer with symmetric=False")
            want = ("group",) if self.group_size is not None else ("channel", "tensor")
            if sp.granularity not in want or (self.group_size is not None and sp.group_size != self.group_size) \
                    or sp.bits > self.bits or sp.signed != self.symmetric:
                raise ArgumentError(f"scale: QParams for {sp.granularity} {sp.bits}-bit "
                                    f"{'signed' if sp.signed else 'unsigned'} weights (group_size {sp.group_size}) "
                                    f"do not fit this {self.bits}-bit {'symmetric' if self.symmetric else 'affine'} "
                                    f"layer (group_size {self.group_size})")
            # the layer keeps one scale per output row: scales along another axis of a square
            # weight would have the right count and be applied to the wrong weights.  The
            # output axis is 0, or -2 on the [out, in * kh * kw] view the layer quantizes (and
            # GPTQ / AWQ work on: gptq.check_layer_spec's rule), or -4 on a conv's own weight.
            if sp.granularity == "channel" and sp.axis not in (0, -2, -len(self.weight_shape)):
                raise ArgumentError(f"scale: per-channel QParams need axis 0 (output channels), "
                                    f"got axis {sp.axis}")
            scale = np.asarray(scale.scale, np.float32)
            if scale.size == 1:
                scale = np.full(rows, scale.reshape(-1)[0], np.float32)
                zp = np.full(rows, zp.reshape(-1)[0])
            zero_point = None if self.symmetric else zp
        if self.symmetric:
            if zero_point is not None:
                raise ArgumentError("zero_point: the layer stores symmetric codes (zero point 0); "
                                    "build it with symmetric=False to store zero points")
            q = check_array(codes, "codes", dtypes=[np.int8], shape=self.weight_shape)
            lo, hi = -(2 ** (self.bits - 1)), 2 ** (self.bits - 1) - 1
        else:
            if zero_point is None:
                raise ArgumentError("zero_point: a symmetric=False layer needs one zero point per scale")
            q = check_array(codes, "codes", dtypes=[np.uint8], shape=self.weight_shape)
            lo, hi = 0, 2**self.bits - 1
        kind = "signed" if self.symmetric else "unsigned"
        if q.size and (int(q.min()) < lo or int(q.max()) > hi):
            raise ArgumentError(f"codes: expected {kind} {self.bits}-bit values in [{lo}, {hi}], "
                                f"got {int(q.min())}..{int(q.max())}")
        s = check_array(scale, "scale", dtypes=[np.float32], finite=True).reshape(-1)
        if s.shape[0] != n_scales:
            raise ShapeError(f"scale: expected {n_scales} scales ({'per group' if self.group_size else 'per channel'}),"
                             f" got {s.shape[0]}")
        if np.any(s <= 0):
            raise ArgumentError("scale: expected positive scales")
        if zero_point is not None:
            z = np.asarray(zero_point).reshape(-1)
            if z.shape[0] != n_scales or z.dtype.kind not in "iu":
                raise ShapeError(f"zero_point: expected {n_scales} integers (one per scale), "
                                 f"got {z.dtype} {z.shape}")
            if z.size and (int(z.min()) < 0 or int(z.max()) > hi):
                raise ArgumentError(f"zero_point: expected values in [0, {hi}], got {int(z.min())}..{int(z.max())}")
        if input_signs is not None:
            if getattr(self, "input_signs", None) is None:
                raise ArgumentError("input_signs: the layer does not rotate its input; "
                                    "build a WeightOnlyLinear with rotate=True")
            d = check_array(input_signs, "input_signs", shape=(self.n_inputs,))
            if not np.all(np.abs(d) == 1):
                raise ArgumentError("input_signs: expected values +1 or -1")
        if input_scale is not None:
            a = check_array(input_scale, "input_scale", dtypes=[np.float32], shape=(self.n_inputs,), finite=True)
            if self.input_scale is None:
                self.register_buffer("input_scale", a.copy())
            else:
                self.input_scale = a.copy()
        if input_signs is not None:
            self.input_signs = d.astype(np.int8)
        self.weight_packed = pack_bits(np.ascontiguousarray(q), self.bits)
        self.weight_scale = s.copy()
        if zero_point is not None:
            self.weight_zero_point = z.astype(np.uint8)
        if bias is not None:
            self.bias = check_array(bias, "bias", dtypes=[np.float32], shape=(rows,)).copy()
        return self

    def _scaled_input(self, x, axis):
        if self.input_scale is None:
            return x
        shape = [1] * np.ndim(x)
        shape[axis] = -1
        return x * self.input_scale.reshape(shape)

    def dense_weight(self) -> np.ndarray:
        def build(buffers):
            from .qparams import QParams, dequantize

            packed = buffers[0]
            rows = self.weight_shape[0]
            q = unpack_bits(packed, self.bits, int(np.prod(self.weight_shape)),
                            signed=self.symmetric).reshape(rows, -1)
            spec = self.spec()
            scale = self.weight_scale.reshape(rows, -1) if self.group_size else self.weight_scale
            zp = (np.zeros(scale.shape, np.int32) if self.symmetric
                  else self.weight_zero_point.astype(np.int32).reshape(scale.shape))
            qp = QParams(scale, zp, spec)
            return dequantize(q, qp).reshape(self.weight_shape)

        # keyed on every buffer: load_state_dict may replace any of them
        zp = () if self.symmetric else (self.weight_zero_point,)
        return self._dense.get((self.weight_packed, self.weight_scale, *zp), build)


@register_module
class WeightOnlyLinear(_WeightOnly):
    """Linear with b-bit weights (int8, int4, ... per channel or per group), float activations."""

    def __init__(self, in_features, out_features, bias=True, bits=8, group_size=None, input_scale=False,
                 symmetric=True, rotate=False):
        super().__init__()
        self.in_features, self.out_features = int(in_features), int(out_features)
        self._init_state((self.out_features, self.in_features), bias, bits, group_size,
                         self.in_features, input_scale, symmetric)
        if not isinstance(rotate, (bool, np.bool_)):
            raise ArgumentError(f"rotate: expected True or False, got {rotate!r}")
        if rotate:
            try:
                hadamard_order(self.in_features)
            except ArgumentError as e:
                raise ArgumentError(f"rotate: in_features = {self.in_features} cannot be rotated ({e})") from None
            self.register_buffer("input_signs", random_signs(self.in_features, 0))
        else:
            self.input_signs = None
        self._unrotated = _Cached()

    def forward(self, x):
        if self.input_signs is None:
            return F.linear(self._scaled_input(x, -1), self.dense_weight(), self.bias)
        return F.linear(x, self.unrotated_weight(), self.bias)

    def unrotated_weight(self) -> np.ndarray:
        """The float weight in the input's own basis, (W_hat diag(input_scale)) Q^T, so that
        x (.)^T = ((x Q) * input_scale) W_hat^T: computed once from the stored codes (cached
        like :meth:`dense_weight`: rebuilt when a buffer is replaced, so assign new arrays
        rather than writing into ``input_scale`` or the codes in place), so the float
        forward costs what an unrotated layer's does.
        A kernel working on the int4 codes themselves would rotate x instead
        (``hadamard_rotate``, n (m + a + ...) operations per row)."""
        if self.input_signs is None:
            w = self.dense_weight()
            return w if self.input_scale is None else w * self.input_scale

        def build(src):
            w = self.dense_weight()
            if self.input_scale is not None:
                w = w * self.input_scale
            return hadamard_rotate(w, self.input_signs, inverse=True)

        zp = () if self.symmetric else (self.weight_zero_point,)
        return self._unrotated.get((self.weight_packed, self.weight_scale, self.input_signs, self.input_scale, *zp),
                                   build)

    def get_config(self):
        cfg = {"in_features": self.in_features, "out_features": self.out_features, "bias": self.bias is not None,
               "bits": self.bits, "group_size": self.group_size}
        if self.input_scale is not None:
            cfg["input_scale"] = True
        if self.input_signs is not None:
            cfg["rotate"] = True
        if not self.symmetric:
            cfg["symmetric"] = False
        return cfg


@register_module
class WeightOnlyConv2d(_WeightOnly):
    """Conv2d with b-bit weights, float activations."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1, groups=1,
                 bias=True, bits=8, group_size=None, input_scale=False, symmetric=True):
        super().__init__()
        self.in_channels, self.out_channels, self.groups = int(in_channels), int(out_channels), int(groups)
        self.kernel_size = _conv.as_pair(kernel_size, "kernel_size", 1)
        self.stride = _conv.as_pair(stride, "stride", 1)
        self.padding = _conv.as_pair(padding, "padding", 0)
        self.dilation = _conv.as_pair(dilation, "dilation", 1)
        shape = (self.out_channels, self.in_channels // self.groups, *self.kernel_size)
        self._init_state(shape, bias, bits, group_size, self.in_channels, input_scale, symmetric)

    def forward(self, x):
        return F.conv2d(self._scaled_input(x, 1), self.dense_weight(), self.bias, self.stride, self.padding,
                        self.dilation, self.groups)

    def get_config(self):
        cfg = {"in_channels": self.in_channels, "out_channels": self.out_channels,
               "kernel_size": list(self.kernel_size), "stride": list(self.stride),
               "padding": list(self.padding), "dilation": list(self.dilation), "groups": self.groups,
               "bias": self.bias is not None, "bits": self.bits, "group_size": self.group_size}
        if self.input_scale is not None:
            cfg["input_scale"] = True
        if not self.symmetric:
            cfg["symmetric"] = False
        return cfg


@register_module
class DynamicQuantizedLinear(Module):
    """float [N, in] -> float [N, out]; each batch's activations are quantized at run time
    (affine uint8 from the batch's min / max), multiplied exactly with int8 weights by
    qgemm, and dequantized with s_a s_w in the epilogue; the float bias is added after."""

    fixed_float_dtype = np.float32  # float32 kernels and scales: Module.to refuses other dtypes

    def __init__(self, in_features, out_features, bias=True):
        super().__init__()
        self.in_features, self.out_features = int(in_features), int(out_features)
        self.register_buffer("weight_q", np.zeros((self.out_features, self.in_features), np.int8))
        self.register_buffer("weight_scale", np.ones(self.out_features, np.float32))
        if bias:
            self.register_buffer("bias", np.zeros(self.out_features, np.float32))
        else:
            self.bias = None
        self._packed = _Cached()

    def forward(self, x):
        from .qparams import calibrate

        x = check_array(x, "x", dtypes=[np.float32], ndim=2)
        qp = calibrate(x, QuantSpec(8, signed=False, symmetric=False, narrow_range=False))
        xq = kernels.quantize(x, qp.scale, qp.zero_point, dtype=np.uint8)
        pw = self._packed.get(self.weight_q, lambda w: kernels.pack_weights(np.ascontiguousarray(w.T)))
        scale = (np.float64(qp.scale) * self.weight_scale.astype(np.float64)).astype(np.float32)
        y = kernels.qgemm(xq, pw, int(qp.zero_point), output=kernels.Dequantize(scale))
        return y + self.bias if self.bias is not None else y

    def get_config(self):
        return {"in_features": self.in_features, "out_features": self.out_features, "bias": self.bias is not None}
