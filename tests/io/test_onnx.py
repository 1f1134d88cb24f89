"""refcompress.io.export_onnx / import_onnx.

The file-level tests need only the onnx package (a test dependency).  The tests that run the
exported graph need onnxruntime and skip without it: integer layers must give refcompress's
uint8 codes bit for bit; float layers agree within

    tol = (sum over the graph's dot products of their length K) * u * max(1, max|y|),

u = 2^-24: a float32 dot product of length K is within K u sum|w x| of the exact one
(Higham, Accuracy and Stability, eq. 3.5), onnxruntime and NumPy each sum in their own
order, and on these test models sum|w x| stays within a small factor of max(1, max|y|).
"""

import os

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from refcompress import io as rio  # noqa: E402
from refcompress import kernels, nn  # noqa: E402
from refcompress.errors import ArgumentError, CorruptFileError, DTypeError, ShapeError  # noqa: E402
from refcompress.io.onnx import to_onnx_model  # noqa: E402
from refcompress.lowrank import CPConv2d, LowRankLinear, Tucker2Conv2d  # noqa: E402
from refcompress.models import mlp_300_100, small_cnn  # noqa: E402
from refcompress.prune.sparse_layers import NMLinear, SparseLinear  # noqa: E402
from refcompress.quant import modules as qm  # noqa: E402
from refcompress.quant.convert import quantize_static, quantize_weight_only  # noqa: E402
from refcompress.quant.qat import QATLinear  # noqa: E402

try:
    import onnxruntime as ort
except ImportError:  # the runtime is optional: only the tests that run graphs need it
    ort = None

needs_ort = pytest.mark.skipif(ort is None, reason="onnxruntime is not installed")
U = 2.0**-24
IMG = (None, 1, 8, 8)


def _unused_initializers(model_proto):
    used = {i for n in model_proto.graph.node for i in n.input}
    return [t.name for t in model_proto.graph.initializer if t.name not in used]


def _run(model_proto, x, optimize=True):
    assert _unused_initializers(model_proto) == []
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if not optimize:
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(model_proto.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return sess.run(None, {"input": x})[0]


def _dot_lengths(model_proto):
    """Sum of the dot-product lengths K of the graph's Gemm / MatMul / Conv nodes (weights
    that are initializers, or computed from one by DequantizeLinear / Reshape / Transpose)."""
    shapes = {t.name: tuple(t.dims) for t in model_proto.graph.initializer}
    inits = {t.name: numpy_helper.to_array(t) for t in model_proto.graph.initializer}
    total = 0
    for n in model_proto.graph.node:
        if n.op_type == "DequantizeLinear":
            shapes[n.output[0]] = shapes.get(n.input[0])
        elif n.op_type == "Reshape" and n.input[1] in inits:
            shapes[n.output[0]] = tuple(inits[n.input[1]])
        elif n.op_type == "Transpose" and shapes.get(n.input[0]):
            shapes[n.output[0]] = shapes[n.input[0]][::-1]
        w = shapes.get(n.input[1]) if len(n.input) > 1 else None
        if n.op_type in ("Gemm", "MatMul") and w:
            trans = any(a.name == "transB" and a.i for a in n.attribute)
            total += w[1] if trans else w[0]
        elif n.op_type == "Conv" and w:
            total += int(np.prod(w[1:]))
    return total


def _assert_float_close(model, shape, x):
    m = to_onnx_model(model, shape)
    got, want = _run(m, x), model(x)
    assert got.shape == want.shape and got.dtype == np.float32
    tol = _dot_lengths(m) * U * max(1.0, float(np.abs(want).max()))
    np.testing.assert_allclose(got, want, rtol=0, atol=tol)
    return m, got


def _imgs(n=5, seed=0):
    return np.random.default_rng(seed).standard_normal((n, 1, 8, 8)).astype(np.float32)


def _trained_like(builder, seed=0):
    model = builder(rng=np.random.default_rng(seed))
    model.train()
    model(_imgs(16, seed + 1))  # BatchNorm running statistics that are not 0 / 1
    return model.eval()


# ---- float export ------------------------------------------------------------------------------


@needs_ort
@pytest.mark.parametrize("builder", [mlp_300_100, small_cnn])
def test_reference_models_run_in_onnxruntime_like_numpy(builder):
    _assert_float_close(_trained_like(builder), IMG, _imgs(7))


@needs_ort
def test_every_float_layer_kind_runs_like_numpy():
    rng = np.random.default_rng(3)
    model = nn.Sequential(
        nn.Conv2d(3, 6, 3, stride=2, padding=1, rng=rng), nn.BatchNorm2d(6), nn.ReLU(),
        nn.Conv2d(6, 6, (3, 1), padding=(1, 0), dilation=(2, 1), groups=3, rng=rng), nn.Tanh(),
        nn.AvgPool2d(3, stride=1, padding=1), nn.MaxPool2d(2, padding=1), nn.Dropout(0.5),
        nn.GlobalAvgPool2d(), nn.Linear(6, 5, rng=rng), nn.BatchNorm1d(5), nn.ReLU(), nn.Linear(5, 4, bias=False, rng=rng),
        nn.Softmax(dim=-1),
    )
    model.train()
    model(rng.standard_normal((8, 3, 13, 11)).astype(np.float32))
    model.train()  # exported as in eval mode; the model's own modes are left as they were
    x = rng.standard_normal((4, 3, 13, 11)).astype(np.float32)
    m = to_onnx_model(model, (None, 3, 13, 11))
    assert all(mod.training for _, mod in model.named_modules())
    np.testing.assert_allclose(_run(m, x), model.eval()(x), rtol=0, atol=_dot_lengths(m) * U * 4)


@needs_ort
def test_sparse_and_low_rank_layers_export_what_they_compute():
    rng = np.random.default_rng(4)
    w = rng.standard_normal((12, 16)).astype(np.float32)
    w[rng.random(w.shape) < 0.7] = 0
    nm_w = rng.standard_normal((8, 12)).astype(np.float32)
    nm_w.reshape(8, 3, 4)[:, :, 2:] = 0  # 2:4
    lin = nn.Linear(16, 12, rng=rng)
    model = nn.Sequential(
        SparseLinear.from_dense(w, rng.standard_normal(12).astype(np.float32)), nn.ReLU(),
        NMLinear.from_dense(nm_w, 2, 4, rng.standard_normal(8).astype(np.float32)), nn.ReLU(),
        LowRankLinear.from_linear(nn.Linear(8, 16, rng=rng), rank=3), nn.ReLU(), lin).eval()
    x = rng.standard_normal((6, 16)).astype(np.float32)
    m = to_onnx_model(model, (None, 16))
    # no sparse op in ONNX: the CSR layer is on disk as its dense weight
    inits = {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}
    (dense,) = [v for k, v in inits.items() if k.startswith("0.weight")]
    np.testing.assert_array_equal(dense, w)
    np.testing.assert_allclose(_run(m, x), model(x), rtol=0, atol=_dot_lengths(m) * U * 8)

    cmodel = nn.Sequential(Tucker2Conv2d.from_conv(nn.Conv2d(4, 6, 3, padding=1, rng=rng), (3, 2)), nn.ReLU(),
                           CPConv2d.from_conv(nn.Conv2d(6, 5, 3, stride=2, padding=1, rng=rng), 2)).eval()
    m, _ = _assert_float_close(cmodel, (None, 4, 7, 7), rng.standard_normal((2, 4, 7, 7)).astype(np.float32))
    assert sum(n.op_type == "Conv" for n in m.graph.node) == 7  # the factors, not a rebuilt kernel


@pytest.mark.parametrize("bits,group_size,symmetric,opset", [
    (8, None, True, 17), (4, None, True, 17), (4, None, True, 21), (4, 4, True, 21), (3, None, False, 17),
    (3, None, False, 21), (4, 4, False, 21), (8, 4, False, 21)])
def test_weight_only_layers_are_dequantized_codes(bits, group_size, symmetric, opset):
    # group-wise: the MLP (every row length a multiple of 4); per channel: the CNN's convs too
    model = _trained_like(mlp_300_100 if group_size else small_cnn)
    wo = quantize_weight_only(model, bits, group_size=group_size, symmetric=symmetric)
    m = to_onnx_model(wo, IMG, opset=opset)
    dq = [n for n in m.graph.node if n.op_type == "DequantizeLinear"]
    assert len(dq) == 3  # the codes are stored, not float weights
    assert _unused_initializers(m) == []
    tensors = {t.name: t for t in m.graph.initializer}
    codes = numpy_helper.to_array(tensors[dq[0].input[0]]).astype(np.int16)
    # opset 21 has 4-bit types: codes of <= 4 bits are stored two a byte, as the layer holds them
    four = bits <= 4 and opset >= 21
    want = {(True, False): TensorProto.INT8, (False, False): TensorProto.UINT8, (True, True): TensorProto.INT4,
            (False, True): TensorProto.UINT4}[(symmetric, four)]
    assert tensors[dq[0].input[0]].data_type == want
    if four:
        assert len(tensors[dq[0].input[0]].raw_data) == (codes.size + 1) // 2
    assert codes.min() >= (-(2 ** (bits - 1)) if symmetric else 0)
    assert codes.max() <= (2 ** (bits - 1) - 1 if symmetric else 2**bits - 1)
    if ort is None:
        return
    x = _imgs(6)
    np.testing.assert_allclose(_run(m, x), wo(x), rtol=0, atol=_dot_lengths(m) * U * max(1, np.abs(wo(x)).max()))


@needs_ort
def test_weight_only_linear_with_input_scale_and_rotation():
    rng = np.random.default_rng(8)
    w = rng.standard_normal((10, 16)).astype(np.float32)
    layer = qm.WeightOnlyLinear(16, 10, bits=4, input_scale=True, rotate=True).set_weight(w, np.ones(10, np.float32))
    layer.set_quantized(np.zeros((10, 16), np.int8) + 1, np.full(10, 0.1, np.float32),
                        input_scale=rng.uniform(0.5, 2, 16).astype(np.float32))
    model = nn.Sequential(layer).eval()
    _assert_float_close(model, (None, 16), rng.standard_normal((3, 16)).astype(np.float32))
    conv = qm.WeightOnlyConv2d(3, 4, 3, padding=1, groups=1, bits=4, input_scale=True)
    conv.set_weight(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), np.ones(4, np.float32))
    conv.set_quantized(np.ones((4, 3, 3, 3), np.int8), np.full(4, 0.1, np.float32),
                       input_scale=np.float32([0.5, 1.0, 3.0]))
    _assert_float_close(nn.Sequential(conv).eval(), (None, 3, 5, 5), rng.standard_normal((2, 3, 5, 5)).astype(np.float32))


@needs_ort
@pytest.mark.parametrize("bias", [False, True])
def test_weight_only_linear_on_rank_3_input_with_default_optimizations(bias):
    # onnxruntime's default graph optimizations once fused DequantizeLinear -> Transpose ->
    # MatMul wrongly for rank-3 input; _run keeps them on (the session default)
    rng = np.random.default_rng(9)
    lin = nn.Linear(16, 5, bias=bias, rng=rng)
    wo = quantize_weight_only(nn.Sequential(lin).eval(), 8)
    m, got = _assert_float_close(wo, (None, 3, 16), rng.standard_normal((2, 3, 16)).astype(np.float32))
    assert got.shape == (2, 3, 5)


def test_group_wise_weight_only_needs_opset_21():
    wo = quantize_weight_only(_trained_like(mlp_300_100), 4, group_size=4)
    with pytest.raises(ArgumentError, match=r"layer '1' \(WeightOnlyLinear\).*opset >= 21 \(got opset 17\)"):
        to_onnx_model(wo, IMG, opset=17)
    assert to_onnx_model(wo, IMG).opset_import[0].version == 21  # chosen when not given


def test_batch_dimension_stays_dynamic_and_names_are_stable(tmp_path):
    path = rio.export_onnx(_trained_like(small_cnn), tmp_path / "cnn.onnx", input_shape=IMG)
    m = onnx.load(path)
    (inp,), (out,) = m.graph.input, m.graph.output
    assert inp.name == "input" and out.name == "output"
    assert inp.type.tensor_type.shape.dim[0].dim_param == "batch"
    assert [d.dim_value for d in inp.type.tensor_type.shape.dim[1:]] == [1, 8, 8]
    assert out.type.tensor_type.shape.dim[0].dim_param == "batch"
    assert out.type.tensor_type.shape.dim[1].dim_value == 10
    assert os.listdir(tmp_path) == ["cnn.onnx"]


@needs_ort
def test_any_batch_size_runs(tmp_path):
    model = _trained_like(mlp_300_100)
    m = to_onnx_model(model, IMG)
    for n in (1, 3, 64):
        x = _imgs(n, n)
        assert _run(m, x).shape == (n, 10)


def test_unsupported_layers_are_named_with_their_path():
    model = nn.Sequential(nn.Flatten(), nn.Sequential(nn.Linear(64, 8), nn.GELU()))
    with pytest.raises(ArgumentError, match=r"layer '1\.1' \(GELU\) cannot be exported to ONNX: no ONNX mapping"):
        to_onnx_model(model, IMG)
    # a subclass with its own forward is refused, not exported as its parent
    qat = nn.Sequential(nn.Flatten(), QATLinear(64, 4))
    with pytest.raises(ArgumentError, match=r"layer '1' \(QATLinear\) cannot be exported to ONNX: no ONNX mapping"):
        to_onnx_model(qat, IMG)


def test_a_failed_export_writes_nothing_and_keeps_the_old_file(tmp_path):
    target = tmp_path / "m.onnx"
    target.write_bytes(b"old")
    with pytest.raises(ArgumentError, match="GELU"):
        rio.export_onnx(nn.Sequential(nn.Linear(4, 4), nn.GELU()), target, input_shape=(None, 4))
    assert target.read_bytes() == b"old" and os.listdir(tmp_path) == ["m.onnx"]


@pytest.mark.parametrize("dtype", [np.float64, np.float16])
def test_a_model_not_in_float32_is_named_as_such(dtype):
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2)).to(dtype)
    with pytest.raises(DTypeError, match=rf"model: parameter '0.weight' of layer '0' is {np.dtype(dtype).name}; "
                       "ONNX export writes float32 graphs"):
        to_onnx_model(model, (None, 4))


def test_bad_arguments_are_refused(tmp_path):
    model = nn.Sequential(nn.Linear(4, 2))
    with pytest.raises(ArgumentError, match="input_shape: expected"):
        to_onnx_model(model, (None,))
    with pytest.raises(ArgumentError, match="input_shape: expected positive ints"):
        to_onnx_model(model, (None, None))
    with pytest.raises(ArgumentError, match=r"opset: expected an int in \[13, "):
        to_onnx_model(model, (None, 4), opset=11)
    with pytest.raises(ArgumentError, match=r"weight_dtype: expected one of \('int8', 'uint8'\), got 'int4'"):
        to_onnx_model(model, (None, 4), weight_dtype="int4")
    with pytest.raises(DTypeError, match="model: expected a refcompress.nn.Module"):
        to_onnx_model("model", (None, 4))
    with pytest.raises(ArgumentError, match="path: .* is a directory"):
        rio.export_onnx(model, tmp_path, input_shape=(None, 4))
    with pytest.raises(ShapeError, match=r"input_shape: the model does not run on an input of shape \(1, 5\) "
                                         r"\(x: expected last dimension 4"):
        to_onnx_model(model, (None, 5))
    with pytest.raises(ArgumentError, match=r"layer '0' \(Conv2d\).*takes rank-4 input, but gets rank 2"):
        to_onnx_model(nn.Sequential(nn.Conv2d(1, 1, 1)), (None, 4))


# ---- integer export: onnxruntime's codes are refcompress's -------------------------------------


def _codes_model(layer, in_shape, z_in):
    """QuantizeStub with scale 1: the float input x = codes passes through exactly, so the
    graph reads the drawn codes; no DequantizeStub: the output is the layer's codes."""
    stub = qm.QuantizeStub()
    stub.scale = np.ones(1, np.float32)
    stub.zero_point = np.zeros(1, np.int32)
    return nn.Sequential(stub, layer).eval()


@st.composite
def _quant_cases(draw, conv, rules=("float", "fixedpoint"), bias=(False, True)):
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    n = draw(st.sampled_from([1, 2, 5]))
    rule = draw(st.sampled_from(rules))
    relu = draw(st.booleans())
    per_channel = draw(st.booleans())
    bias = draw(st.sampled_from(bias))
    act_bits = draw(st.sampled_from([8, 8, 6]))
    if conv:
        groups = draw(st.sampled_from([1, 1, 2, 3]))
        cin = groups * draw(st.sampled_from([1, 2, 3, 7]))
        cout = groups * draw(st.sampled_from([1, 2, 5]))
        k = (draw(st.sampled_from([1, 2, 3])), draw(st.sampled_from([1, 3])))
        stride = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
        dil = (draw(st.integers(1, 2)), 1)
        pad = (draw(st.integers(0, k[0] // 2 + 1)), draw(st.integers(0, 1)))
        h = draw(st.integers(max(1, dil[0] * (k[0] - 1) + 1 - 2 * pad[0]), 9))
        w = draw(st.integers(max(1, k[1] - 2 * pad[1]), 9))
        layer = qm.QuantizedConv2d(cin, cout, k, stride, pad, dil, groups, bias=bias, rule=rule, relu=relu,
                                   act_bits=act_bits, per_channel=per_channel)
        K = cin // groups * k[0] * k[1]
        wq = rng.integers(-127, 128, (cout, cin // groups, *k), dtype=np.int8)
        shape = (n, cin, h, w)
    else:
        K = draw(st.sampled_from([1, 2, 3, 13, 31, 63, 64, 65, 257]))
        cout = draw(st.sampled_from([1, 2, 7, 16, 17, 64, 65]))
        layer = qm.QuantizedLinear(K, cout, bias=bias, rule=rule, relu=relu, act_bits=act_bits,
                                   per_channel=per_channel)
        wq = rng.integers(-127, 128, (cout, K), dtype=np.int8)
        shape = (n, K)
    hi = 2**act_bits - 1
    z_in = int(draw(st.sampled_from([0, 1, hi // 2, hi])))
    z_out = int(draw(st.sampled_from([0, 3, hi // 2, hi])))
    s_in = np.float32(draw(st.sampled_from([0.02, 1.0, 0.0037])))
    if draw(st.booleans()):
        # small: codes near z_in, small weights and bias, power-of-two scales so M is 2^-4 .. 4
        # exactly -- the outputs land in range with small right shifts, where the rounding
        # details show (SRDHM's nudge, RDBPOT's ties, the float rule's ties at M = 1/2)
        wq = rng.integers(-4, 5, wq.shape).astype(np.int8)
        ws = (2.0 ** rng.integers(-1, 2, cout if per_channel else 1)).astype(np.float32)
        s_out = np.float32(s_in * 2.0 ** draw(st.sampled_from([-1, 0, 1, 2, 3])))
        bq = rng.integers(-64, 65, cout).astype(np.int32) if bias else None
        x = np.clip(z_in + rng.integers(-6, 7, shape), 0, hi).astype(np.float32)
    else:
        # s_in s_w / s_out around 1 / (typical |acc|): mostly in range, some saturating, and the
        # extremes of the multiplier (tiny ones give z_out, M > 1 shifts left and saturates int32)
        typical = np.sqrt(K) * 127 * 128
        m_exp = draw(st.sampled_from([-3.0, -1.0, 0.0, 0.5, 2.0, 6.0, -12.0, 24.0]))
        ws = (rng.uniform(0.5, 2.0, cout) if per_channel else rng.uniform(0.5, 2.0, 1)).astype(np.float32)
        s_out = np.float32(s_in * float(ws.mean()) * typical / 2**m_exp / 64)
        bq = rng.integers(-(2**20), 2**20, cout).astype(np.int32) if bias else None
        x = rng.integers(0, hi + 1, shape).astype(np.float32)
    layer.set_quantized(wq, ws, bq, (s_in, z_in), (s_out, z_out))
    if draw(st.booleans()):  # the extremes of the code range
        x.reshape(-1)[:: max(1, x.size // 7)] = draw(st.sampled_from([0, hi]))
    return _codes_model(layer, shape, z_in), x, draw(st.sampled_from(["int8", "uint8"]))


def _check_codes(model, x, weight_dtype="int8"):
    m = to_onnx_model(model, (None,) + x.shape[1:], weight_dtype=weight_dtype)
    with kernels.use("numpy"):
        want = model(x)
    assert want.dtype == np.uint8
    for optimize in (True, False):
        got = _run(m, x, optimize)
        assert got.dtype == np.uint8
        np.testing.assert_array_equal(got, want, err_msg=f"optimize={optimize}")
    np.testing.assert_array_equal(model(x), want)  # and the C kernels' codes, for completeness


@needs_ort
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_quant_cases(conv=False))
def test_quantized_linear_codes_match_bit_for_bit(case):
    _check_codes(*case)


@needs_ort
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_quant_cases(conv=True))
def test_quantized_conv_codes_match_bit_for_bit(case):
    _check_codes(*case)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(_quant_cases(conv=False, rules=("fixedpoint",)), _quant_cases(conv=True, rules=("fixedpoint",)),
                 _quant_cases(conv=False, rules=("float",), bias=(True,))))
def test_integer_graphs_in_onnx_reference_evaluator(case):
    """No runtime needed (this runs wherever onnx is installed): onnx's own NumPy evaluator
    runs the integer-op graphs -- the fixed-point rule's int64 steps, and the float rule's
    MatMulInteger / Mul / QuantizeLinear form -- to refcompress's codes.  (The QLinear ops
    are left out: the evaluator computes them in its own float precision, not MLAS's.)"""
    from onnx.reference import ReferenceEvaluator

    model, x, weight_dtype = case
    m = to_onnx_model(model, (None,) + x.shape[1:], weight_dtype=weight_dtype)
    with kernels.use("numpy"):
        want = model(x)
    np.testing.assert_array_equal(ReferenceEvaluator(m).run(None, {"input": x})[0], want)


@needs_ort
@pytest.mark.parametrize("weight_dtype", ["int8", "uint8"])
@pytest.mark.parametrize("rule", ["float", "fixedpoint"])
@pytest.mark.parametrize("builder", [mlp_300_100, small_cnn])
def test_digits_models_after_ptq_give_the_same_codes(rule, builder, weight_dtype):
    from refcompress.data import load_digits

    data = load_digits().as_images()
    model = _trained_like(builder)
    q = quantize_static(model, data.X_train[:256], rule=rule)
    assert isinstance(q[-1], qm.DequantizeStub)
    codes = nn.Sequential(*list(q)[:-1]).eval()  # up to the last integer layer's codes
    x = data.X_test
    m = to_onnx_model(codes, IMG, weight_dtype=weight_dtype)
    with kernels.use("numpy"):
        want = codes(x)
    np.testing.assert_array_equal(_run(m, x), want)
    # the full model ends on DequantizeLinear: the same floats, (q - z) * s
    full = to_onnx_model(q, IMG, weight_dtype=weight_dtype)
    inits = {t.name: numpy_helper.to_array(t) for t in full.graph.initializer}
    assert {v.dtype for k, v in inits.items() if ".weight_q" in k} == {np.dtype(weight_dtype)}
    np.testing.assert_array_equal(_run(full, x), q(x))
    ops = {n.op_type for n in full.graph.node}
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops
    assert ("QLinearConv" in ops or "MatMulInteger" in ops) if rule == "float" else "Mod" in ops


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("weight_dtype", ["int8", "uint8"])
def test_int8_factored_linear_exports_to_its_own_bits(bias, weight_dtype):
    """QuantizedLowRankLinear: QuantizeLinear, two MatMulInteger with the float rule's
    requantization of h between them, the int32 bias, one Mul: refcompress's floats bit for
    bit in onnx's evaluator (and onnxruntime when installed), inputs beyond the calibration
    range (saturating codes) included."""
    from onnx.reference import ReferenceEvaluator

    from refcompress.lowrank import QuantizedLowRankLinear

    rng = np.random.default_rng(7)
    nn.manual_seed(7)
    x = (rng.standard_normal((60, 24)) * 3).astype(np.float32)
    layer = LowRankLinear.from_linear(nn.Linear(24, 10, bias=bias), 5).eval()
    model = nn.Sequential(QuantizedLowRankLinear.from_lowrank(layer, x[:20] / 3), nn.ReLU())
    m = to_onnx_model(model, (None, 24), weight_dtype=weight_dtype)
    with kernels.use("numpy"):
        want = model(x)
    np.testing.assert_array_equal(ReferenceEvaluator(m).run(None, {"input": x})[0], want)
    if ort is not None:
        np.testing.assert_array_equal(_run(m, x), want)
    np.testing.assert_array_equal(model(x), want)  # and the C kernel's


@needs_ort
def test_quantized_relu_maxpool_and_low_activation_bits():
    rng = np.random.default_rng(11)
    model = _trained_like(small_cnn)
    calib = rng.standard_normal((128, 1, 8, 8)).astype(np.float32)
    q = quantize_static(model, calib, act_bits=5)
    x = rng.standard_normal((9, 1, 8, 8)).astype(np.float32)
    np.testing.assert_array_equal(_run(to_onnx_model(q, IMG), x), q(x))
    relu = qm.QuantizedReLU(zero_point=37)
    mp = qm.QuantizedMaxPool2d(2, padding=1)
    stub = qm.QuantizeStub()
    stub.scale, stub.zero_point = np.full(1, 0.05, np.float32), np.full(1, 60, np.int32)
    chain = nn.Sequential(stub, relu, mp, nn.Flatten()).eval()
    np.testing.assert_array_equal(_run(to_onnx_model(chain, (None, 2, 5, 5)), x[:, :, :5, :5].repeat(2, 1)),
                                  chain(x[:, :, :5, :5].repeat(2, 1)))


@needs_ort
def test_a_layer_kept_in_float_between_stubs_and_mixed_weight_bits():
    model = _trained_like(small_cnn)
    q = quantize_static(model, _imgs(128, 3), rule="fixedpoint", exclude=["3"], weight_bits={"0": 4})
    kinds = [type(m).__name__ for m in q]
    assert "Conv2d" in kinds and kinds.count("QuantizeStub") == 2
    x = _imgs(11, 4)
    got, want = _run(to_onnx_model(q, IMG), x), q(x)
    # The float conv between the stubs sums in onnxruntime's order, not NumPy's: a last-bit
    # difference can move a value across a rounding boundary of the QuantizeLinear after it,
    # one code step, which the integer layers then carry exactly.  So: nearly all equal.
    assert np.mean(got == want) >= 0.9
    np.testing.assert_array_equal(got.argmax(1), want.argmax(1))


def test_float_rule_scales_are_the_exact_multiplier():
    """The QLinear ops carry (1, M, 1): the runtime's x_scale * w_scale / y_scale is M."""
    q = quantize_static(_trained_like(small_cnn), _imgs(64), rule="float")
    m = to_onnx_model(q, IMG)
    inits = {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}
    (conv, _) = [n for n in m.graph.node if n.op_type == "QLinearConv"]
    layer = q[1]
    assert inits[conv.input[1]] == 1 and inits[conv.input[6]] == 1
    np.testing.assert_array_equal(inits[conv.input[4]], layer._output().scale)


# ---- import ------------------------------------------------------------------------------------


@pytest.mark.parametrize("builder", [mlp_300_100, small_cnn])
def test_round_trip_gives_the_same_outputs(builder, tmp_path):
    model = _trained_like(builder)
    path = rio.export_onnx(model, tmp_path / "m.onnx", input_shape=IMG)
    back = rio.import_onnx(path)
    x = _imgs(9)
    # the same layer types with the same float32 weights run the same NumPy code
    np.testing.assert_array_equal(back(x), model(x))
    assert [type(m) for m in back] == [type(m) for m in model]


def test_round_trip_of_every_importable_layer(tmp_path):
    rng = np.random.default_rng(2)
    model = nn.Sequential(
        nn.Conv2d(4, 6, 3, stride=2, padding=1, groups=2, rng=rng), nn.BatchNorm2d(6), nn.ReLU(),
        nn.AvgPool2d(3, stride=1, padding=1), nn.MaxPool2d(2), nn.Dropout(), nn.GlobalAvgPool2d(),
        nn.Linear(6, 5, rng=rng), nn.Tanh(), nn.Linear(5, 3, rng=rng), nn.Softmax(-1)).eval()
    path = rio.export_onnx(model, tmp_path / "m.onnx", input_shape=(None, 4, 9, 9))
    back = rio.import_onnx(path)
    assert [type(m).__name__ for m in back] == ["Conv2d", "BatchNorm2d", "ReLU", "AvgPool2d", "MaxPool2d",
                                                 "GlobalAvgPool2d", "Linear", "Tanh", "Linear", "Softmax"]
    x = rng.standard_normal((3, 4, 9, 9)).astype(np.float32)
    np.testing.assert_array_equal(back(x), model(x))


def _graph_file(tmp_path, nodes, inits, in_shape, out_shape, name="g.onnx", opset=17):
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, in_shape)],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, out_shape)],
                          [numpy_helper.from_array(np.asarray(v), k) for k, v in inits.items()])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    path = tmp_path / name
    path.write_bytes(m.SerializeToString())
    return path


@pytest.mark.parametrize("trans_b", [0, 1])
def test_import_gemm_attributes(tmp_path, trans_b):
    rng = np.random.default_rng(0)
    W = rng.standard_normal((3, 5)).astype(np.float32)  # [out, in]
    b = rng.standard_normal(3).astype(np.float32)
    B = W if trans_b else W.T.copy()
    path = _graph_file(tmp_path, [helper.make_node("Gemm", ["x", "B", "C"], ["y"], transB=trans_b, alpha=0.5,
                                                   beta=2.0)], {"B": B, "C": b}, ["n", 5], ["n", 3])
    (lin,) = rio.import_onnx(path)
    x = rng.standard_normal((4, 5)).astype(np.float32)
    np.testing.assert_allclose(lin(x), 0.5 * x @ W.T + 2.0 * b, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(lin.weight.data, (0.5 * W).astype(np.float32))


def test_import_matmul_add_reshape_and_conv_padding_groups(tmp_path):
    rng = np.random.default_rng(1)
    w = rng.standard_normal((6, 2, 3, 3)).astype(np.float32)
    cb = rng.standard_normal(6).astype(np.float32)
    M = rng.standard_normal((6 * 3 * 3, 2)).astype(np.float32)  # OH = OW = 3
    nodes = [helper.make_node("Conv", ["x", "w", "cb"], ["c"], pads=[2, 1, 2, 1], strides=[2, 1], group=2,
                              dilations=[1, 2], name="conv"),
             helper.make_node("Reshape", ["c", "shape"], ["r"]),
             helper.make_node("MatMul", ["r", "M"], ["mm"]), helper.make_node("Add", ["mm", "b"], ["y"])]
    path = _graph_file(tmp_path, nodes, {"w": w, "cb": cb, "M": M, "b": np.float32([1, 2]),
                                         "shape": np.array([0, -1], np.int64)}, ["n", 4, 4, 5], ["n", 2])
    back = rio.import_onnx(path)
    conv = back[0]
    assert (conv.padding, conv.stride, conv.dilation, conv.groups) == ((2, 1), (2, 1), (1, 2), 2)
    x = rng.standard_normal((2, 4, 4, 5)).astype(np.float32)
    want = nn.functional.conv2d(x, w, cb, (2, 1), (2, 1), (1, 2), 2).reshape(2, -1) @ M + np.float32([1, 2])
    np.testing.assert_allclose(back(x), want, rtol=1e-5, atol=1e-5)
    if ort is not None:
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        np.testing.assert_allclose(sess.run(None, {"x": x})[0], back(x), rtol=1e-5, atol=1e-5)


_W = np.ones((4, 4), np.float32)


@pytest.mark.parametrize("nodes,inits,match", [
    ([helper.make_node("Sigmoid", ["x"], ["y"], name="sig")], {}, r"node 'sig' \(Sigmoid\) is not supported"),
    ([helper.make_node("Gemm", ["x", "W"], ["y"], transA=1, name="g")], {"W": _W}, r"'g' \(Gemm\) has transA=1"),
    ([helper.make_node("Relu", ["x"], ["a"], name="r1"), helper.make_node("Add", ["a", "x"], ["y"], name="res")],
     {}, r"'res' \(Add\) is not part of a single chain"),
    ([helper.make_node("Add", ["x", "W"], ["y"], name="lone")], {"W": _W[0]}, r"'lone' \(Add\) is an Add that"),
    ([helper.make_node("MatMul", ["x", "x"], ["y"], name="mm")], {}, r"'mm' \(MatMul\) is not part of a single"),
    ([helper.make_node("Reshape", ["x", "s"], ["y"], name="rs")], {"s": np.array([2, 8], np.int64)},
     r"'rs' \(Reshape\) is not a flatten"),
])
def test_import_refusals_name_the_node_and_op(tmp_path, nodes, inits, match):
    path = _graph_file(tmp_path, nodes, inits, ["n", 4], ["n", 4])
    with pytest.raises(ArgumentError, match=match):
        rio.import_onnx(path)


@pytest.mark.parametrize("node,match", [
    (helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 0, 0], name="c"), r"'c' \(Conv\) has pads \[1, 1, 0, 0\]"),
    (helper.make_node("Conv", ["x", "w"], ["y"], auto_pad="SAME_UPPER", name="c"), r"'c' \(Conv\) has auto_pad"),
    (helper.make_node("MaxPool", ["x"], ["y"], kernel_shape=[2, 2], ceil_mode=1, name="p"), r"'p' \(MaxPool\) has ceil"),
    (helper.make_node("AveragePool", ["x"], ["y"], kernel_shape=[3, 3], pads=[1, 1, 1, 1], name="a"),
     r"'a' \(AveragePool\) has count_include_pad=0"),
    (helper.make_node("GlobalAveragePool", ["x"], ["y"], name="gap"), r"'gap' \(GlobalAveragePool\) is not followed"),
])
def test_import_refusals_of_conv_and_pooling(tmp_path, node, match):
    path = _graph_file(tmp_path, [node], {"w": np.ones((2, 2, 3, 3), np.float32)}, ["n", 2, 6, 6], ["n", "c", "h", "w"])
    with pytest.raises(ArgumentError, match=match):
        rio.import_onnx(path)


def test_import_refuses_integer_graphs_and_computed_weights(tmp_path):
    q = quantize_static(_trained_like(mlp_300_100), _imgs(64))
    path = rio.export_onnx(q, tmp_path / "q.onnx", input_shape=IMG)
    with pytest.raises(ArgumentError, match=r"\(QuantizeLinear\) is not supported by import_onnx"):
        rio.import_onnx(path)
    nodes = [helper.make_node("Relu", ["W0"], ["W"], name="wr"),
             helper.make_node("Gemm", ["x", "W"], ["y"], name="gemm")]
    path = _graph_file(tmp_path, nodes, {"W0": _W}, ["n", 4], ["n", 4])
    with pytest.raises(ArgumentError, match="wr"):
        rio.import_onnx(path)


def test_import_refuses_a_shapeless_or_integer_input(tmp_path):
    g = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, None)],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    (tmp_path / "s.onnx").write_bytes(helper.make_model(g).SerializeToString())
    with pytest.raises(CorruptFileError, match=r"s.onnx: the ONNX model does not pass onnx.checker \(Field 'shape'"):
        rio.import_onnx(tmp_path / "s.onnx")
    g = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.UINT8, ["n", 4])],
                          [helper.make_tensor_value_info("y", TensorProto.UINT8, ["n", 4])])
    (tmp_path / "u.onnx").write_bytes(helper.make_model(g).SerializeToString())
    with pytest.raises(ArgumentError, match="input 'x' is UINT8; import reads float32 graphs"):
        rio.import_onnx(tmp_path / "u.onnx")


@pytest.mark.parametrize("content", [b"", b"not an onnx file at all", None])
def test_damaged_or_foreign_files_are_corrupt_file_errors(tmp_path, content):
    path = tmp_path / "bad.onnx"
    if content is None:  # a real model cut short
        good = rio.export_onnx(_trained_like(mlp_300_100), tmp_path / "good.onnx", input_shape=IMG)
        content = open(good, "rb").read()[:-200]
    path.write_bytes(content)
    with pytest.raises(CorruptFileError, match="bad.onnx"):
        rio.import_onnx(path)


def test_an_npz_model_is_not_an_onnx_model(tmp_path):
    path = tmp_path / "m.npz"
    rio.save(_trained_like(mlp_300_100), path)
    with pytest.raises(CorruptFileError, match="m.npz"):
        rio.import_onnx(path)


# ---- import: what the review found accepted or refused on the wrong basis ----------------------


def _softmax(x, axis):
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


@pytest.mark.parametrize("opset,axis,ok", [(11, None, False), (11, 1, False), (11, 2, True), (11, -1, True),
                                           (11, 5, False), (13, None, True), (13, 1, True)])
def test_import_reads_softmax_by_the_graphs_opset(tmp_path, opset, axis, ok):
    # before opset 13 Softmax flattens the axes from `axis` (default 1) on and normalises them together
    attrs = {} if axis is None else {"axis": axis}
    path = _graph_file(tmp_path, [helper.make_node("Softmax", ["x"], ["y"], name="sm", **attrs)], {},
                       ["n", 3, 4], ["n", 3, 4], opset=opset)
    if not ok:
        with pytest.raises(ArgumentError, match=rf"'sm' \(Softmax\) has axis {axis or 1} at opset 11"):
            rio.import_onnx(path)
        return
    x = np.random.default_rng(0).standard_normal((2, 3, 4)).astype(np.float32)
    want = _softmax(x, -1 if opset < 13 or axis is None else axis)
    np.testing.assert_allclose(rio.import_onnx(path)(x), want, rtol=1e-6, atol=1e-7)


def test_import_refuses_batchnorm_with_spatial_0(tmp_path):
    inits = [numpy_helper.from_array(np.ones(3, np.float32), k) for k in "sbmv"]
    g = helper.make_graph([helper.make_node("BatchNormalization", ["x", "s", "b", "m", "v"], ["y"], spatial=0,
                                            name="bn")], "g",
                          [helper.make_tensor_value_info(k, TensorProto.FLOAT, ["n", 3] if k == "x" else [3])
                           for k in "xsbmv"],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 3])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 7)])
    m.ir_version = 3
    (tmp_path / "bn.onnx").write_bytes(m.SerializeToString())
    with pytest.raises(ArgumentError, match=r"'bn' \(BatchNormalization\) has spatial=0"):
        rio.import_onnx(tmp_path / "bn.onnx")


def test_import_reads_external_data_beside_the_model_not_in_the_cwd(tmp_path, monkeypatch):
    rng = np.random.default_rng(1)
    w, c = rng.standard_normal((4, 3)).astype(np.float32), rng.standard_normal(3).astype(np.float32)
    g = helper.make_graph([helper.make_node("Gemm", ["x", "W", "C"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 3])],
                          [numpy_helper.from_array(w, "W"), numpy_helper.from_array(c, "C")])
    (tmp_path / "m").mkdir()
    onnx.save_model(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(tmp_path / "m" / "e.onnx"),
                    save_as_external_data=True, all_tensors_to_one_file=True, location="e.bin", size_threshold=0)
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    x = rng.standard_normal((2, 4)).astype(np.float32)
    np.testing.assert_array_equal(rio.import_onnx(tmp_path / "m" / "e.onnx")(x), x @ w + c)
    os.rename(tmp_path / "m" / "e.bin", tmp_path / "e.bin")
    with pytest.raises(CorruptFileError, match=r"e.onnx: cannot read the model's external data"):
        rio.import_onnx(tmp_path / "m" / "e.onnx")
    m = onnx.load(str(tmp_path / "m" / "e.onnx"), load_external_data=False)
    for t in m.graph.initializer:
        for e in t.external_data:
            if e.key == "location":
                e.value = "../e.bin"  # a file that exists, outside the model's directory
    (tmp_path / "m" / "out.onnx").write_bytes(m.SerializeToString())
    with pytest.raises(CorruptFileError, match=r"out.onnx: cannot read the model's external data.*outside"):
        rio.import_onnx(tmp_path / "m" / "out.onnx")


def test_an_initializer_with_more_data_than_its_shape_is_corrupt(tmp_path):
    t = numpy_helper.from_array(np.ones((4, 4), np.float32), "W")
    t.raw_data += b"\0" * 8
    g = helper.make_graph([helper.make_node("Gemm", ["x", "W"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4])], [t])
    (tmp_path / "r.onnx").write_bytes(helper.make_model(g).SerializeToString())
    with pytest.raises(CorruptFileError, match=r"r.onnx: initializer 'W' cannot be read: its data does not fit "
                       r"its shape \[4, 4\]"):
        rio.import_onnx(tmp_path / "r.onnx")


def test_import_refusals_of_look_alikes(tmp_path):
    g = helper.make_graph([helper.make_node("Relu", ["x"], ["y"], domain="my.domain", name="r")], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4])])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("my.domain", 1)])
    (tmp_path / "d.onnx").write_bytes(m.SerializeToString())
    with pytest.raises(ArgumentError, match=r"'r' \(Relu\) is in domain 'my.domain'"):
        rio.import_onnx(tmp_path / "d.onnx")
    path = _graph_file(tmp_path, [helper.make_node("Dropout", ["x", "r", "t"], ["y"], name="do")],
                       {"r": np.float32(0.5), "t": np.array(True)}, ["n", 4], ["n", 4])
    with pytest.raises(ArgumentError, match=r"'do' \(Dropout\) has training_mode=True"):
        rio.import_onnx(path)
    path = _graph_file(tmp_path, [helper.make_node("Dropout", ["x", "r", "t"], ["y"], name="do")],
                       {"r": np.float32(0.5), "t": np.array(False)}, ["n", 4], ["n", 4])
    assert len(rio.import_onnx(path)) == 0


@pytest.mark.parametrize("in_shape,target,ok", [
    (["n", 8], [-1, 4], False),  # regroups rows: not a flatten, whatever follows
    (["n", 2, 4], [-1, 8], True), (["n", 2, 4], [0, 8], True), (["n", 2, 4], [-1, 4], False),
    (["n", "k", 4], [-1, 8], False),  # F cannot be checked against an unknown dim
    (["n", "k", 4], [0, -1], True)])
def test_import_reads_a_reshape_as_a_flatten_only_when_it_is_one(tmp_path, in_shape, target, ok):
    path = _graph_file(tmp_path, [helper.make_node("Reshape", ["x", "s"], ["y"], name="rs")],
                       {"s": np.array(target, np.int64)}, in_shape, ["n", "f"])
    if not ok:
        with pytest.raises(ArgumentError, match=r"'rs' \(Reshape\) is not a flatten"):
            rio.import_onnx(path)
        return
    x = np.arange(16, dtype=np.float32).reshape(2, 2, 4)
    np.testing.assert_array_equal(rio.import_onnx(path)(x), x.reshape(2, 8))


def test_import_accepts_broadcast_biases_swapped_adds_and_a_shapeless_output(tmp_path):
    rng = np.random.default_rng(2)
    w, c = rng.standard_normal((4, 3)).astype(np.float32), rng.standard_normal(3).astype(np.float32)
    x = rng.standard_normal((2, 4)).astype(np.float32)
    path = _graph_file(tmp_path, [helper.make_node("Gemm", ["x", "W", "C"], ["y"])],
                       {"W": w, "C": c[:1].reshape(1, 1)}, ["n", 4], ["n", 3], name="c11.onnx")
    np.testing.assert_array_equal(rio.import_onnx(path)(x), x @ w + c[0])
    path = _graph_file(tmp_path, [helper.make_node("MatMul", ["x", "W"], ["h"]),
                                  helper.make_node("Add", ["C", "h"], ["y"])], {"W": w, "C": c},
                       ["n", 4], None, name="swapped.onnx")  # and the output declares no shape
    model = rio.import_onnx(path)
    assert len(model) == 1
    np.testing.assert_array_equal(model(x), x @ w + c)


# ---- import: damaged files and malformed graphs that pass onnx.checker -------------------------


def test_every_flipped_bit_of_an_exported_graph_is_a_refcompress_error_or_imports(tmp_path):
    """A damaged file raised UnicodeDecodeError (a name that is not UTF-8, from the checker),
    KeyError (an initializer's data type 33) or ValueError (the input's element type 33)."""
    good = rio.export_onnx(nn.Sequential(nn.Linear(8, 3)), tmp_path / "good.onnx", input_shape=(None, 8))
    data = open(good, "rb").read()
    path = tmp_path / "bad.onnx"
    for pos in range(len(data)):
        for bit in range(8):
            b = bytearray(data)
            b[pos] ^= 1 << bit
            path.write_bytes(b)
            try:
                rio.import_onnx(path)
            except (CorruptFileError, ArgumentError) as e:
                assert str(e).startswith(f"{path}: "), (pos, bit, e)


def _damaged(tmp_path, edit):
    path = _graph_file(tmp_path, [helper.make_node("Gemm", ["x", "W"], ["y"], transB=1)],
                       {"W": np.ones((2, 3), np.float32)}, ["n", 3], ["n", 2])
    m = onnx.load(path)
    edit(m)
    path.write_bytes(m.SerializeToString())
    return path


def test_an_unknown_element_type_is_a_corrupt_file(tmp_path):
    path = _damaged(tmp_path, lambda m: setattr(m.graph.initializer[0], "data_type", 33))
    with pytest.raises(CorruptFileError, match=f"{path}: initializer 'W' has data type 33, which is not an ONNX"):
        rio.import_onnx(path)
    path = _damaged(tmp_path, lambda m: setattr(m.graph.input[0].type.tensor_type, "elem_type", 33))
    with pytest.raises(CorruptFileError, match=f"{path}: input 'x' has element type 33, which is not an ONNX"):
        rio.import_onnx(path)


F = np.float32
BAD_GRAPHS = {
    "conv bias length": ([helper.make_node("Conv", ["x", "w", "b"], ["y"])],
                         {"w": np.ones((4, 3, 3, 3), F), "b": np.ones(3, F)}, [1, 3, 8, 8], [1, 4, 6, 6],
                         r"Conv\) has a bias of shape \(3,\); expected \(4,\)"),
    "conv strides [1]": ([helper.make_node("Conv", ["x", "w"], ["y"], strides=[1])],
                         {"w": np.ones((4, 3, 3, 3), F)}, [1, 3, 8, 8], [1, 4, 6, 6],
                         r"Conv\) has strides \[1\]; a 2-D convolution takes two"),
    "conv group 0": ([helper.make_node("Conv", ["x", "w"], ["y"], group=0)],
                     {"w": np.ones((4, 3, 3, 3), F)}, [1, 3, 8, 8], [1, 4, 6, 6], r"Conv\) has group 0"),
    "conv channels": ([helper.make_node("Conv", ["x", "w"], ["y"])],
                      {"w": np.ones((4, 2, 3, 3), F)}, [1, 3, 8, 8], [1, 4, 6, 6],
                      r"Conv\) reads 3 channels, but its weight \[4, 2, 3, 3\] with group 1 takes 2"),
    "bn scalar": ([helper.make_node("BatchNormalization", ["x", "s", "b", "m", "v"], ["y"])],
                  {k: F(1) for k in "sbmv"}, [1, 3], [1, 3], r"BatchNormalization\) has scale of shape \(\)"),
    "bn lengths": ([helper.make_node("BatchNormalization", ["x", "s", "b", "m", "v"], ["y"])],
                   {"s": np.ones(3, F), "b": np.ones(3, F), "m": np.ones(2, F), "v": np.ones(3, F)}, ["n", 3],
                   ["n", 3], r"BatchNormalization\) has mean of shape \(2,\); expected one value per channel, "
                   r"shape \(3,\)"),
    "bn channels": ([helper.make_node("BatchNormalization", ["x", "s", "b", "m", "v"], ["y"])],
                    {k: np.ones(2, F) for k in "sbmv"}, ["n", 3], ["n", 3],
                    r"BatchNormalization\) has scale of shape \(2,\); expected one value per channel, shape \(3,\)"),
    "gemm string": ([helper.make_node("Gemm", ["x", "w"], ["y"], transB=1)],
                    {"w": np.array([["a"] * 3] * 2, object)}, [1, 3], [1, 2],
                    r"Gemm\) has a weight B 'w' of type object; expected numbers"),
    "gemm empty": ([helper.make_node("Gemm", ["x", "w"], ["y"], transB=1)], {"w": np.ones((0, 3), F)}, [1, 3],
                   [1, 0], r"Gemm\) has no refcompress.nn form \(out_features"),
    "pool strides [1]": ([helper.make_node("MaxPool", ["x"], ["y"], kernel_shape=[2, 2], strides=[1])], {},
                         [1, 3, 8, 8], [1, 3, 7, 7], r"MaxPool\) has strides \[1\]; 2-D pooling takes two"),
}


@pytest.mark.parametrize("case", list(BAD_GRAPHS))
def test_malformed_graphs_the_checker_passes_are_argument_errors_naming_the_node(tmp_path, case):
    nodes, inits, i, o, msg = BAD_GRAPHS[case]
    path = _graph_file(tmp_path, nodes, inits, i, o)
    with pytest.raises(ArgumentError, match=f"{path}: node 'y' \\({msg}"):
        rio.import_onnx(path)
