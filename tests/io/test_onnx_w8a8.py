"""W8A8Linear and DynamicQuantizedLinear in ONNX: the same activation codes, the same int32
accumulators and the same float32 outputs as refcompress, bit for bit.

The codes and accumulators compared are the very ones the layer hands to kernels.qgemm
(captured by wrapping it), not a re-derivation in the test.  onnx's ReferenceEvaluator runs
every case (it needs only the onnx package); onnxruntime runs them too when installed, with
its graph optimizations on and off.  docs/io.md gives the argument for exactness: every
float step of the graph is one IEEE float32 (or float64) operation that refcompress also
performs, in the same order, and the epilogue multiplies and adds separately (no FMA) in
both.
"""

import contextlib

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper  # noqa: E402
from onnx.reference import ReferenceEvaluator  # noqa: E402

import refcompress.kernels as K  # noqa: E402
from refcompress import kernels, nn  # noqa: E402
from refcompress.io.onnx import to_onnx_model  # noqa: E402
from refcompress.quant.modules import DynamicQuantizedLinear  # noqa: E402
from refcompress.quant.qparams import choose_qparams  # noqa: E402
from refcompress.quant.w8a8 import ACTIVATION_SPEC, W8A8Linear  # noqa: E402

try:
    import onnxruntime as ort
except ImportError:  # optional: ReferenceEvaluator still checks every case
    ort = None

KS = [1, 2, 3, 13, 31, 63, 64, 65, 257]  # primes, around the 64-wide panels, one tile and a bit
NS = [1, 2, 7, 16, 17, 64, 65]


@contextlib.contextmanager
def _captured_qgemm():
    """Record (codes, zero point, packed weights) of every kernels.qgemm call."""
    seen = []
    real = K.qgemm

    def spy(a, b, a_zero_point=0, *args, **kw):
        seen.append((a.copy(), int(a_zero_point), b))
        return real(a, b, a_zero_point, *args, **kw)

    mp = pytest.MonkeyPatch()
    mp.setattr(K, "qgemm", spy)
    try:
        yield seen
    finally:
        mp.undo()


def _near_ties(layer, kind, shape, rng, e):
    """Inputs whose quantizer argument is within an ulp of k + 1/2 for an activation scale
    that is not a power of two: where a division and a multiply by float32(1 / s) round
    differently (a few in a hundred), so the graph must divide as refcompress does.  For
    the dynamic modes the scale is pinned by the row's / tensor's extremes, taken after the
    SmoothQuant factors as the layer takes them (x / m per tensor, x * float32(1 / m) per
    token), and the ties are placed in what the quantizer divides: x / (s m_j) per tensor,
    x * float32(1 / m_j) / s_i per token."""
    m = np.asarray(getattr(layer, "smooth", np.ones(shape[-1], np.float32)), np.float32)
    x = np.zeros(shape, np.float32)
    c = np.float32(e * rng.uniform(1.01, 1.99))
    if kind == "token":
        inv = (np.float32(1) / m).astype(np.float32)
        x[..., 0] = np.float32(127) * c / inv[0]

        def scale(x):
            return (np.abs(x * inv).max(-1, keepdims=True) / np.float32(127)).astype(np.float32)

        s = scale(x)
        t = ((rng.integers(-100, 100, shape) + 0.5).astype(np.float32) * s) / inv  # |k + 1/2| < 127
    elif kind == "static":
        t = (rng.integers(-100, 100, shape) + 0.5).astype(np.float32) * layer._static_params()[0]
    else:
        # one element: pinned at -40 c; codes k + 1/2 in [-35, 200) stay inside the pins
        pins = np.array([-40 * c, 215 * c], np.float32)[: x.size]
        x.reshape(-1)[: pins.size] = pins * np.broadcast_to(m, shape).reshape(-1)[: pins.size]

        def scale(x):
            xs = x / m
            return np.float32(choose_qparams(np.float32(xs.min()), np.float32(xs.max()), ACTIVATION_SPEC).scale)

        s = scale(x)
        t = (rng.integers(-35, 200, shape) + 0.5).astype(np.float32) * (s * m).astype(np.float32)
    t = np.where(rng.random(shape) < 0.5, np.nextafter(t, np.float32(np.inf) * rng.choice([-1, 1], shape)), t)
    x = np.where(x != 0, x, t).astype(np.float32)
    if kind != "static":  # else the ties are not at the scale the layer takes
        np.testing.assert_array_equal(scale(x), s)
    return x


@st.composite
def _cases(draw):
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    kind = draw(st.sampled_from(["static", "tensor", "token", "dynamic"]))
    k, n = draw(st.sampled_from(KS)), draw(st.sampled_from(NS))
    bias = draw(st.booleans())
    lead = draw(st.sampled_from([(1,), (2,), (5,), (1, 1), (2, 3), (3, 7)]))
    if kind == "dynamic":
        lead = lead[:1]  # DynamicQuantizedLinear takes rank-2 input
    w = rng.standard_normal((n, k)).astype(np.float32)
    b = (rng.standard_normal(n) * 3).astype(np.float32) if bias else None
    smooth = None
    if kind != "dynamic" and draw(st.booleans()):
        # SmoothQuant factors: wide-ranging, some powers of two, some whose reciprocal is inexact
        smooth = np.exp(rng.uniform(-4, 4, k)).astype(np.float32)
        smooth[:: 3] = 2.0 ** rng.integers(-3, 4, smooth[:: 3].size)
    data = draw(st.sampled_from(["normal", "outliers", "ties", "near ties", "tiny", "zeros", "saturate"]))
    e = float(2.0 ** draw(st.integers(-6, 3)))
    shape = lead + (k,)
    if data == "normal":
        x = rng.standard_normal(shape) * e
    elif data == "outliers":  # a few channels 100x larger, what SmoothQuant is for
        x = rng.standard_normal(shape) * e
        x[..., rng.integers(0, k, max(1, k // 8))] *= 100
    elif data == "ties":
        # x / s lands on k + 1/2 when s is the power of two e (set below per mode)
        x = (rng.integers(-300, 300, shape) + rng.integers(0, 2, shape) * 0.5) * e
    elif data == "near ties":  # filled in below, once the scale is known
        x = np.zeros(shape)
    elif data == "tiny":  # subnormal rows: a per-token scale underflows to 0, then is 1
        x = rng.integers(-200, 200, shape) * 2.0**-149
    elif data == "zeros":
        x = np.zeros(shape)
    else:  # far outside a static range: the codes saturate
        x = rng.standard_normal(shape) * 1e6
    x = x.astype(np.float32)
    calib = (rng.standard_normal((16, k)) * e).astype(np.float32)
    if kind == "dynamic":
        layer = DynamicQuantizedLinear(k, n, bias=bias)
        layer.weight_q = rng.integers(-127, 128, (n, k), dtype=np.int8)
        layer.weight_scale = rng.uniform(0.001, 0.1, n).astype(np.float32)
        if bias:
            layer.bias = b
    else:
        layer = W8A8Linear.from_float(w, b, activation=kind, smooth=smooth, calibration=calib)
    if data == "ties":
        z = int(draw(st.sampled_from([0, 1, 128, 255])))
        if kind == "static":  # scale exactly e (with m = 1: s_a m_j = e)
            layer.input_scale = np.asarray(e, np.float32)
            layer.input_zero_point = np.asarray(z, np.int32)
            layer.smooth = np.ones(k, np.float32)
        elif kind in ("tensor", "dynamic") and x.size > 1 and smooth is None:
            # min -z e and max (255 - z) e: s = 255 e / 255 = e exactly, zero point z
            flat = x.reshape(-1)
            flat[0], flat[-1] = -z * e, (255 - z) * e
        elif kind == "token" and smooth is None:
            x[..., 0] = 127 * e  # row max 127 e: s_i = e exactly
    if data == "near ties":
        x = _near_ties(layer, kind, shape, rng, e)
    return layer.eval(), x, draw(st.sampled_from(["int8", "uint8"])), draw(st.sampled_from([13, 17, 18, 21]))


def _with_outputs(m, names):
    """A copy of model proto ``m`` that also outputs the named intermediate tensors."""
    out = onnx.ModelProto()
    out.CopyFrom(m)
    for name, elem in names:
        out.graph.output.append(helper.make_tensor_value_info(name, elem, None))
    return out


def _node_output(m, node_name):
    (hit,) = [n.output[0] for n in m.graph.node if n.name == node_name]
    return hit


def _check(layer, x, weight_dtype, opset):
    model = nn.Sequential(layer).eval()
    with _captured_qgemm() as seen:
        want = model(x)  # the C kernels (auto backend)
    (codes, z, packed), = seen
    acc = kernels.qgemm(codes, packed, z)  # int32, the products the layer used
    with kernels.use("numpy"):
        np.testing.assert_array_equal(model(x), want)  # the reference agrees, for completeness
    m = to_onnx_model(model, (None,) + x.shape[1:], opset=opset, weight_dtype=weight_dtype)
    q_name, acc_name = _node_output(m, "0/quantize"), _node_output(m, "0")
    probe = _with_outputs(m, [(q_name, TensorProto.UINT8), (acc_name, TensorProto.INT32)])
    # per-token codes are int8 in refcompress and travel as q + 128 with zero point 128
    offset = 128 if codes.dtype == np.int8 else 0
    runs = {"reference evaluator": ReferenceEvaluator(probe).run(None, {"input": x})}
    if ort is not None:
        for optimize in (True, False):
            opts = ort.SessionOptions()
            opts.log_severity_level = 3
            if not optimize:
                opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
            for what, proto in (("", m), (" (with probes)", probe)):
                sess = ort.InferenceSession(proto.SerializeToString(), opts, providers=["CPUExecutionProvider"])
                runs[f"onnxruntime optimize={optimize}{what}"] = sess.run(None, {"input": x})
    for who, got in runs.items():
        assert got[0].dtype == np.float32 and got[0].shape == want.shape, who
        np.testing.assert_array_equal(got[0].view(np.uint32), want.view(np.uint32), err_msg=who)
        if len(got) > 1:
            q = got[1].reshape(codes.shape).astype(np.int16) - offset
            np.testing.assert_array_equal(q, codes, err_msg=who + ": activation codes")
            np.testing.assert_array_equal(got[2].reshape(acc.shape), acc, err_msg=who + ": int32 accumulators")


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_cases())
def test_codes_accumulators_and_outputs_are_bit_for_bit(case):
    _check(*case)


@pytest.mark.parametrize("activation", ["static", "tensor", "token"])
@pytest.mark.parametrize("smooth", [False, True])
@pytest.mark.parametrize("bias", [False, True])
def test_every_mode_with_and_without_smoothing_and_bias(activation, smooth, bias):
    rng = np.random.default_rng(7)
    k, n = 31, 17
    w = rng.standard_normal((n, k)).astype(np.float32)
    m = np.exp(rng.uniform(-2, 2, k)).astype(np.float32) if smooth else None
    calib = rng.standard_normal((32, k)).astype(np.float32)
    layer = W8A8Linear.from_float(w, rng.standard_normal(n).astype(np.float32) if bias else None,
                                  activation=activation, smooth=m, calibration=calib)
    _check(layer, (rng.standard_normal((2, 5, k)) * 2).astype(np.float32), "int8", 17)


@pytest.mark.parametrize("kind, smooth", [("static", False), ("tensor", False), ("token", False), ("dynamic", False),
                                          ("static", True), ("tensor", True), ("token", True)])
def test_quantizers_divide_by_the_scale_as_refcompress_does(kind, smooth):
    rng = np.random.default_rng(11)
    k, n = 64, 16
    if kind == "dynamic":
        layer = DynamicQuantizedLinear(k, n)
        layer.weight_q = rng.integers(-127, 128, (n, k), dtype=np.int8)
        shape = (40, k)
    else:
        m = np.exp(rng.uniform(-3, 3, k)).astype(np.float32) if smooth else None
        layer = W8A8Linear.from_float(rng.standard_normal((n, k)).astype(np.float32), None, activation=kind,
                                      smooth=m, calibration=rng.standard_normal((8, k)).astype(np.float32))
        shape = (4, 10, k)
    _check(layer.eval(), _near_ties(layer, kind, shape, rng, 0.37), "int8", 17)


def test_the_graph_uses_only_standard_ops_and_no_dynamic_quantize_linear():
    rng = np.random.default_rng(1)
    layer = DynamicQuantizedLinear(8, 3)
    layer.weight_q = rng.integers(-127, 128, (3, 8), dtype=np.int8)
    m = to_onnx_model(nn.Sequential(nn.Flatten(), layer), (None, 8))
    ops = {n.op_type for n in m.graph.node}
    assert {"MatMulInteger", "QuantizeLinear", "ReduceMin", "ReduceMax"} <= ops
    assert "DynamicQuantizeLinear" not in ops  # it rounds the scale in float32 twice
    assert all(n.domain in ("", "ai.onnx") for n in m.graph.node)


def _static_layer(k=8, n=3):
    rng = np.random.default_rng(5)
    return W8A8Linear.from_float(rng.standard_normal((n, k)).astype(np.float32), None, activation="static",
                                 calibration=rng.standard_normal((16, k)).astype(np.float32))


@pytest.mark.parametrize("param, value, message", [
    ("input_zero_point", 256, r"input_zero_point: expected an int in \[0, 255\] \(a uint8 code\), got 256"),
    ("input_zero_point", -1, r"input_zero_point: expected an int in \[0, 255\] \(a uint8 code\), got -1"),
    ("input_scale", 0.0, r"input_scale: expected finite values > 0, got 0\.0"),
    ("input_scale", np.nan, r"input_scale: expected finite values > 0, got nan"),
    ("input_scale", -1.0, r"input_scale: expected finite values > 0, got -1\.0"),
    ("weight_scale", np.inf, r"weight_scale: expected finite values > 0, got inf"),
    ("smooth", 0.0, r"smooth: expected finite values > 0, got 0\.0"),
])
@pytest.mark.parametrize("in_bert", [False, True])
def test_parameters_no_graph_can_hold_are_refused_naming_layer_and_parameter(param, value, message, in_bert):
    """Caught while the graph is built: a chain's probe run would blame input_shape, and a
    BertModel's export has no probe run at all."""
    from refcompress.errors import ArgumentError

    layer = _static_layer(32, 64)
    buf = getattr(layer, param)
    bad = np.array(buf, copy=True)
    bad.reshape(-1)[0] = value
    setattr(layer, param, bad.astype(buf.dtype))
    if in_bert:
        import sys
        from pathlib import Path

        sys.path.insert(0, str(Path(__file__).parents[1] / "bert"))
        from _tiny_bert import tiny_bert

        model, where = tiny_bert(hidden_size=32, num_attention_heads=4, intermediate_size=64), \
            "encoder.layer.0.intermediate.dense"
        model.encoder.layer[0].intermediate.dense = layer
        export = lambda: to_onnx_model(model)  # noqa: E731
    else:
        where = "1"
        export = lambda: to_onnx_model(nn.Sequential(nn.Flatten(), layer), (None, 32))  # noqa: E731
    with pytest.raises(ArgumentError, match=rf"layer '{where}' \(W8A8Linear\) cannot be exported to ONNX: {message}"):
        export()


def test_a_token_layer_whose_smoothing_reciprocal_overflows_is_refused_naming_it():
    from refcompress.errors import ArgumentError

    rng = np.random.default_rng(2)
    layer = W8A8Linear.from_float(rng.standard_normal((3, 4)).astype(np.float32), None, activation="token")
    layer.smooth = np.array([1e-39, 1, 1, 1], np.float32)  # float32(1 / m) is inf
    with pytest.raises(ArgumentError, match=r"layer '0' \(W8A8Linear\) cannot be exported to ONNX: smooth: "
                                            r"expected factors whose float32 reciprocal is finite"):
        to_onnx_model(nn.Sequential(layer), (None, 4))


@pytest.mark.parametrize("activation", ["static", "tensor", "token"])
def test_no_rows_give_no_rows_in_every_mode(activation):
    """A (0, K) input gives (0, N) in refcompress (the per-tensor range of nothing included)
    and in the graph."""
    rng = np.random.default_rng(3)
    layer = W8A8Linear.from_float(rng.standard_normal((5, 7)).astype(np.float32),
                                  rng.standard_normal(5).astype(np.float32), activation=activation,
                                  calibration=rng.standard_normal((8, 7)).astype(np.float32))
    x = np.zeros((0, 7), np.float32)
    y = layer(x)
    assert y.shape == (0, 5) and y.dtype == np.float32
    m = to_onnx_model(nn.Sequential(layer), (None, 7))
    assert ReferenceEvaluator(m).run(None, {"input": x})[0].shape == (0, 5)
    if ort is not None:
        sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
        assert sess.run(None, {"input": x})[0].shape == (0, 5)
