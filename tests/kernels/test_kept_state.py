"""What qgemm / qconv2d keep between calls with packed weights (the validated output spec,
the C epilogue, the K bound, max|bias|, the conv geometry, the workspace): every result
equals the one of a first, uncached call and of the NumPy reference; a kept value is never
reused for a call whose arguments differ (shape, zero point, dtype, layout, stride, threads,
or arrays written in place); and bad arguments raise the same errors with a warm cache."""

import dataclasses
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

import refcompress.kernels as kernels
from refcompress.errors import ArgumentError, DTypeError, OverflowRiskError, ShapeError
from refcompress.kernels import Dequantize, Requantize
from refcompress.quant.modules import QuantizedConv2d, QuantizedLinear
from refcompress.testing import assert_exact, kernel_variants

QGEMM = kernel_variants("qgemm")
QCONV = kernel_variants("qconv2d")


def _id(v):
    return f"{v[0]}-{v[1]}" if v[1] else v[0]


def _fresh(output):
    """An equal spec object that has never been used (nothing kept on it)."""
    return dataclasses.replace(output)


def _ref_qgemm(a, b, za, zb, bias, output):
    with kernels.use("numpy"):
        return kernels.qgemm(a, b, za, zb, bias=bias, output=None if output is None else _fresh(output))


def _ref_qconv(x, w, zx, zw, bias, output, **geo):
    with kernels.use("numpy"):
        return kernels.qconv2d(x, w, zx, zw, bias=bias, output=None if output is None else _fresh(output), **geo)


# ---- qgemm ------------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", QGEMM, ids=_id)
def test_qgemm_warm_calls_equal_the_first_call_and_the_reference(variant):
    rng = np.random.default_rng(11)
    b = rng.integers(-128, 128, (70, 67)).astype(np.int8)
    zb = rng.integers(-4, 4, 67)
    bias = rng.integers(-5000, 5000, 67).astype(np.int32)
    outputs = [None, Requantize(np.float32(3e-4), 128, np.uint8),
               Requantize(rng.uniform(1e-4, 5e-4, 67).astype(np.float32), -3, np.int8, "fixedpoint", qmin=-3),
               Dequantize(rng.uniform(1e-4, 5e-4, 67).astype(np.float32), relu=True,
                          bias=rng.standard_normal(67).astype(np.float32))]
    a = rng.integers(0, 256, (3, 70)).astype(np.uint8)
    for output in outputs:
        pw = kernels.pack_weights(b, zb)
        with kernels.use(*variant):
            first = kernels.qgemm(a, pw, 100, bias=bias, output=output)
            for _ in range(3):
                assert_exact(kernels.qgemm(a, pw, 100, bias=bias, output=output), first)
        assert_exact(first, _ref_qgemm(a, b, 100, zb, bias, output))


def test_qgemm_kept_values_follow_every_argument_that_can_change():
    rng = np.random.default_rng(12)
    b = rng.integers(-128, 128, (40, 33)).astype(np.int8)
    pw = kernels.pack_weights(b)
    scale = rng.uniform(1e-4, 5e-4, 33).astype(np.float32)
    out = Requantize(scale, 7, np.uint8)
    bias = rng.integers(-3000, 3000, 33).astype(np.int32)
    a8 = rng.integers(0, 256, (5, 40)).astype(np.uint8)
    kernels.qgemm(a8, pw, 3, bias=bias, output=out)  # warm every cache
    # other M, other zero point, other dtype, a non-contiguous view
    a_wide = rng.integers(0, 256, (9, 80)).astype(np.uint8)
    ai8 = rng.integers(-128, 128, (2, 40)).astype(np.int8)
    for a, za in ((a8, 3), (a8[:1], 3), (a8, 200), (ai8, -7), (a_wide[:, ::2], 3), (np.asfortranarray(a8), 3)):
        assert_exact(kernels.qgemm(a, pw, za, bias=bias, output=out), _ref_qgemm(np.ascontiguousarray(a), b, za, 0,
                                                                                 bias, out))
    # writes into the scale and the bias arrays after they were kept
    scale[:5] *= 2
    bias[3] = 2**20
    assert_exact(kernels.qgemm(a8, pw, 3, bias=bias, output=out), _ref_qgemm(a8, b, 3, 0, bias, out))
    # the same spec without the bias, then with another bias array; and int32 output
    assert_exact(kernels.qgemm(a8, pw, 3, output=out), _ref_qgemm(a8, b, 3, 0, None, out))
    bias2 = bias[::-1].copy()
    assert_exact(kernels.qgemm(a8, pw, 3, bias=bias2, output=out), _ref_qgemm(a8, b, 3, 0, bias2, out))
    assert_exact(kernels.qgemm(a8, pw, 3), _ref_qgemm(a8, b, 3, 0, None, None))
    # the same spec object with a layer of another width: validated for that width
    with pytest.raises(ShapeError, match=r"output.scale: expected a scalar or shape \(34,\)"):
        kernels.qgemm(a8, kernels.pack_weights(np.zeros((40, 34), np.int8)), 3, output=out)
    # out dtype: a uint8 and an int8 spec on the same packed weights
    out_i8 = Requantize(np.float32(3e-4), -5, np.int8)
    for o in (out, out_i8, out):
        y = kernels.qgemm(a8, pw, 3, bias=bias, output=o)
        assert y.dtype == o.dtype
        assert_exact(y, _ref_qgemm(a8, b, 3, 0, bias, o))


def test_qgemm_bad_arguments_raise_the_same_errors_with_a_warm_cache():
    rng = np.random.default_rng(13)
    pw = kernels.pack_weights(rng.integers(-128, 128, (6, 4)).astype(np.int8))
    a = rng.integers(0, 256, (2, 6)).astype(np.uint8)
    scale = np.full(4, 1e-3, np.float32)
    out = Requantize(scale, 0, np.uint8)
    bias = np.zeros(4, np.int32)
    kernels.qgemm(a, pw, 0, bias=bias, output=out)  # warm
    with pytest.raises(DTypeError, match="a: expected dtype uint8, int8, got float32"):
        kernels.qgemm(a.astype(np.float32), pw, output=out)
    with pytest.raises(ShapeError, match="a: expected a 2-D array"):
        kernels.qgemm(a[0], pw, output=out)
    with pytest.raises(ShapeError, match="inner dimensions"):
        kernels.qgemm(a[:, :5], pw, output=out)
    with pytest.raises(ArgumentError, match="a_zero_point: expected an integer in"):
        kernels.qgemm(a, pw, 256, output=out)
    with pytest.raises(ArgumentError, match="a_zero_point: expected an integer in"):
        kernels.qgemm(a.view(np.int8), pw, 200, output=out)
    with pytest.raises(DTypeError, match="a_zero_point: expected an integer"):
        kernels.qgemm(a, pw, 1.0, output=out)
    # equal to the warm call's zero point and hashed alike, but not an integer
    with pytest.raises(DTypeError, match="a_zero_point: expected an integer"):
        kernels.qgemm(a, pw, 0.0, bias=bias, output=out)
    with pytest.raises(ArgumentError, match="b_zero_point"):
        kernels.qgemm(a, pw, 0, 1, output=out)
    with pytest.raises(DTypeError, match="bias: expected dtype int32"):
        kernels.qgemm(a, pw, bias=bias.astype(np.int64), output=out)
    with pytest.raises(ShapeError, match="bias: expected shape"):
        kernels.qgemm(a, pw, bias=bias[:3], output=out)
    scale[1] = 0.0  # written in place after the spec was validated and kept
    with pytest.raises(ArgumentError, match="output.scale: expected finite values > 0"):
        kernels.qgemm(a, pw, 0, bias=bias, output=out)
    with pytest.raises(ArgumentError, match="output.scale: expected finite values > 0"):
        kernels.qgemm(a, pw, 0, bias=bias, output=out)  # and again: errors are never kept
    scale[1] = 1e-3
    kernels.qgemm(a, pw, 0, bias=bias, output=out)
    fb = np.zeros(4, np.float32)
    deq = Dequantize(np.float32(1e-3), bias=fb)
    kernels.qgemm(a, pw, output=deq)
    fb[2] = np.nan
    with pytest.raises(ArgumentError, match="output.bias: expected finite values"):
        kernels.qgemm(a, pw, output=deq)
    with pytest.raises(DTypeError, match="output: expected None, Requantize or Dequantize"):
        kernels.qgemm(a, pw, output="uint8")


def test_qgemm_a_bias_written_past_the_bound_is_refused_with_a_warm_cache():
    # int8 activations with zero point 127 and weights with zero point -128: every
    # |(a - z_a)(b - z_b)| <= 255 * 255, so K = 33000 leaves 1,658,647 for max|bias|.
    K = 33000
    pw = kernels.pack_weights(np.zeros((K, 2), np.int8), -128)
    a = np.zeros((1, K), np.int8)
    bias = np.array([1_000_000, -1_658_647], np.int32)
    kernels.qgemm(a, pw, 127, bias=bias)
    kernels.qgemm(a, pw, 127, bias=bias)
    bias[0] = 1_658_648
    with pytest.raises(OverflowRiskError, match="max\\|bias\\| = 1658648"):
        kernels.qgemm(a, pw, 127, bias=bias)
    bias[0] = 0
    bias[1] = -(2**31)
    with pytest.raises(OverflowRiskError, match="max\\|bias\\| = 2147483648"):
        kernels.qgemm(a, pw, 127, bias=bias)
    # the same zero point and bias with the other activation type: its own bound
    bias[:] = (1_658_648, 0)
    kernels.qgemm(a, pw, 0, bias=bias)  # int8, z_a = 0: |a - z_a| <= 128
    with pytest.raises(OverflowRiskError, match="uint8 activations with zero point 0"):
        kernels.qgemm(a.view(np.uint8), pw, 0, bias=bias)  # uint8, z_a = 0: |a - z_a| <= 255


# ---- qconv2d ----------------------------------------------------------------------------------


CONV_CASES = [  # (C, OC, k, groups, stride, padding): direct 1x1 / 3x3, implicit im2col, depthwise, grouped
    (16, 8, 1, 1, 1, 0), (8, 16, 3, 1, 1, 1), (8, 16, 3, 1, 2, 1), (12, 12, 3, 12, 1, 1), (8, 12, 3, 2, 1, 0)]


@pytest.mark.parametrize("variant", QCONV, ids=_id)
@pytest.mark.parametrize("case", CONV_CASES, ids=str)
def test_qconv2d_warm_calls_equal_the_first_call_and_the_reference(variant, case):
    C, OC, k, groups, stride, padding = case
    rng = np.random.default_rng(21)
    w = rng.integers(-128, 128, (OC, C // groups, k, k)).astype(np.int8)
    zw = rng.integers(-3, 3, OC)
    bias = rng.integers(-4000, 4000, OC).astype(np.int32)
    x = rng.integers(0, 256, (2, C, 9, 10)).astype(np.uint8)
    for output in (None, Requantize(rng.uniform(1e-4, 4e-4, OC).astype(np.float32), 5, np.uint8, qmin=5),
                   Requantize(np.float32(2e-4), 0, np.int8, "fixedpoint")):
        pw = kernels.pack_conv_weights(w, zw, groups)
        with kernels.use(*variant):
            first = kernels.qconv2d(x, pw, 9, bias=bias, stride=stride, padding=padding, output=output)
            for _ in range(3):
                assert_exact(kernels.qconv2d(x, pw, 9, bias=bias, stride=stride, padding=padding, output=output),
                             first)
        assert_exact(first, _ref_qconv(x, w, 9, zw, bias, output, stride=stride, padding=padding, groups=groups))


@pytest.mark.parametrize("case", CONV_CASES, ids=str)
def test_qconv2d_kept_values_follow_every_argument_that_can_change(case):
    C, OC, k, groups, stride, padding = case
    rng = np.random.default_rng(22)
    w = rng.integers(-128, 128, (OC, C // groups, k, k)).astype(np.int8)
    pw = kernels.pack_conv_weights(w, 0, groups)
    scale = rng.uniform(1e-4, 4e-4, OC).astype(np.float32)
    out = Requantize(scale, 3, np.uint8)
    bias = rng.integers(-4000, 4000, OC).astype(np.int32)
    x = rng.integers(0, 256, (1, C, 8, 8)).astype(np.uint8)
    geo = dict(stride=stride, padding=padding)
    kernels.qconv2d(x, pw, 5, bias=bias, output=out, **geo)  # warm every cache

    def check(x, zx, threads=None, b=bias, **g):
        g = {**geo, **g}
        with kernels.use(threads=threads):
            got = kernels.qconv2d(x, pw, zx, bias=b, output=out, **g)
        assert_exact(got, _ref_qconv(np.ascontiguousarray(x), w, zx, 0, b, out, groups=groups, **g))

    x_big = rng.integers(0, 256, (3, C, 11, 7)).astype(np.uint8)
    check(x_big, 5)  # other N, H, W
    check(x, 250)  # other zero point
    check(x.view(np.int8), -100)  # other dtype
    check(x_big[:, :, ::2, 1:], 5)  # a non-contiguous view
    check(np.ascontiguousarray(x.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2), 5)  # channels-last memory
    check(x, 5, stride=(2, 1))
    check(x, 5, padding=(padding + 1, padding))
    check(x, 5, dilation=2)
    check(x, 5, threads=1)
    check(x, 5, threads=2)
    check(x, 5, b=None)  # the same spec without a bias, then with another bias array
    check(x, 5, b=-bias)
    scale[::2] *= 3  # writes into the kept arrays
    bias[-1] = -(2**24)
    check(x, 5)
    check(x, 5, threads=1)


def test_qconv2d_bad_arguments_raise_the_same_errors_with_a_warm_cache():
    rng = np.random.default_rng(23)
    pw = kernels.pack_conv_weights(rng.integers(-128, 128, (6, 4, 3, 3)).astype(np.int8))
    x = rng.integers(0, 256, (1, 4, 5, 5)).astype(np.uint8)
    scale = np.full(6, 1e-3, np.float32)
    out = Requantize(scale, 0, np.uint8)
    bias = np.zeros(6, np.int32)
    kernels.qconv2d(x, pw, 0, bias=bias, padding=1, output=out)  # warm
    kernels.qconv2d(x, pw, 0, bias=bias, stride=1, padding=(1, 1), dilation=1, output=out)
    kernels.qconv2d(x, pw, 0, bias=bias, output=out)  # padding 0 on 5 x 5 (kept)
    with pytest.raises(DTypeError, match="x: expected dtype uint8, int8, got float32"):
        kernels.qconv2d(x.astype(np.float32), pw, padding=1, output=out)
    with pytest.raises(ShapeError, match="x: expected a 4-D array"):
        kernels.qconv2d(x[0], pw, padding=1, output=out)
    with pytest.raises(ShapeError, match="x, w: x has 3 channels"):
        kernels.qconv2d(x[:, :3], pw, padding=1, output=out)
    with pytest.raises(ShapeError, match="smaller than the dilated kernel"):
        kernels.qconv2d(x[:, :, :2], pw, output=out)  # other H, the kept geometry arguments
    with pytest.raises(ShapeError, match="smaller than the dilated kernel"):
        kernels.qconv2d(x, pw, padding=1, dilation=4, output=out)
    # equal to the kept (1, 1) keys in Python, but refused by the validation
    with pytest.raises(DTypeError, match="padding: expected an integer"):
        kernels.qconv2d(x, pw, padding=1.0, output=out)
    with pytest.raises(DTypeError, match="stride: expected an integer"):
        kernels.qconv2d(x, pw, stride=True, padding=1, output=out)
    with pytest.raises(DTypeError, match="padding: expected an integer"):
        kernels.qconv2d(x, pw, padding=(1, 1.0), output=out)
    with pytest.raises(ArgumentError, match="stride: expected an integer in"):
        kernels.qconv2d(x, pw, stride=0, padding=1, output=out)
    with pytest.raises(ArgumentError, match="x_zero_point: expected an integer in"):
        kernels.qconv2d(x, pw, -1, padding=1, output=out)
    with pytest.raises(ArgumentError, match="w_zero_point, groups"):
        kernels.qconv2d(x, pw, 0, 2, padding=1, output=out)
    with pytest.raises(DTypeError, match="bias: expected dtype int32"):
        kernels.qconv2d(x, pw, bias=bias.astype(np.int64), padding=1, output=out)
    with pytest.raises(ArgumentError, match="output: qconv2d's Dequantize takes scale and relu only"):
        kernels.qconv2d(x, pw, padding=1, output=Dequantize(np.float32(1e-3), bias=np.zeros(6, np.float32)))
    scale[4] = np.inf
    with pytest.raises(ArgumentError, match="output.scale: expected finite values > 0"):
        kernels.qconv2d(x, pw, 0, bias=bias, padding=1, output=out)
    scale[4] = 1e-3
    kernels.qconv2d(x, pw, 0, bias=bias, padding=1, output=out)


def test_qconv2d_a_bias_written_past_the_bound_is_refused_with_a_warm_cache():
    # 3x3 over 2000 channels, zero points 255 (uint8 x) and -128 (w): K * 255 * 255 is
    # 1,170,450,000, which leaves 977,033,647 for max|bias|.
    pw = kernels.pack_conv_weights(np.zeros((2, 2000, 3, 3), np.int8), -128)
    x = np.full((1, 2000, 3, 3), 255, np.uint8)
    bias = np.array([977_033_647, 0], np.int32)
    kernels.qconv2d(x, pw, 255, bias=bias)
    bias[1] = -977_033_648
    with pytest.raises(OverflowRiskError, match="bound"):
        kernels.qconv2d(x, pw, 255, bias=bias)


# ---- shared state across Python threads --------------------------------------------------------


@pytest.mark.parametrize("variant", [v for v in QCONV if v[0] == "c"], ids=_id)
def test_threads_sharing_packed_weights_and_evicting_kept_epilogues(variant):
    # Each thread uses its own output specs on the same packed weights, more of them than
    # are kept, so entries are evicted while other threads' kernels run (the GIL is
    # released): every result must still be its own.
    rng = np.random.default_rng(31)
    w = rng.integers(-128, 128, (16, 8, 3, 3)).astype(np.int8)
    pw = kernels.pack_conv_weights(w, rng.integers(-2, 2, 16))
    pgemm = kernels.pack_weights(rng.integers(-128, 128, (72, 16)).astype(np.int8))
    xs = [rng.integers(0, 256, (1, 8, 10, 10)).astype(np.uint8) for _ in range(4)]
    a = rng.integers(0, 256, (3, 72)).astype(np.uint8)
    outs = [[Requantize(rng.uniform(1e-4, 4e-4, 16).astype(np.float32), t, np.uint8, rule) for rule in
             ("float", "fixedpoint") for _ in range(5)] for t in range(4)]
    biases = [rng.integers(-2000, 2000, 16).astype(np.int32) for _ in range(4)]
    want = [[(_ref_qconv(xs[t], pw, 4, 0, biases[t], o, padding=1), _ref_qgemm(a, pgemm, 4, 0, biases[t], o))
             for o in outs[t]] for t in range(4)]

    # qgemm has no VBMI variant: under it, qgemm runs its best one
    gemm_isa = variant[1] if variant[1] in kernels.variants("qgemm") else kernels.variants("qgemm")[-1]

    def work(t):
        for _ in range(10):
            for o, (wc, wg) in zip(outs[t], want[t]):
                with kernels.use(*variant, threads=1):
                    assert_exact(kernels.qconv2d(xs[t], pw, 4, bias=biases[t], padding=1, output=o), wc)
                with kernels.use("c", isa=gemm_isa, threads=1):
                    assert_exact(kernels.qgemm(a, pgemm, 4, bias=biases[t], output=o), wg)

    with ThreadPoolExecutor(4) as pool:
        for f in [pool.submit(work, t) for t in range(4)]:
            f.result()


# ---- layers -----------------------------------------------------------------------------------


def test_layers_give_the_kernels_results_and_follow_replaced_buffers():
    rng = np.random.default_rng(41)
    lin = QuantizedLinear(24, 10).set_quantized(rng.integers(-127, 128, (10, 24)), rng.uniform(0.01, 0.02, 10),
                                                rng.integers(-500, 500, 10), (0.05, 120), (0.1, 7))
    conv = QuantizedConv2d(6, 4, 3, padding=1, relu=True).set_quantized(
        rng.integers(-127, 128, (4, 6, 3, 3)), rng.uniform(0.01, 0.02, 4), rng.integers(-500, 500, 4),
        (0.05, 120), (0.1, 7))
    a = rng.integers(0, 256, (3, 24)).astype(np.uint8)
    x = rng.integers(0, 256, (2, 6, 5, 5)).astype(np.uint8)

    def expect(layer, inp):
        m = layer.input_scale[0].astype(np.float64) * layer.weight_scale / layer.output_scale[0]
        z = int(layer.output_zero_point[0])
        out = Requantize(m.astype(np.float32), z, np.uint8, qmin=z if layer.relu else 0)
        zx = int(layer.input_zero_point[0])
        if isinstance(layer, QuantizedLinear):
            return _ref_qgemm(inp, np.ascontiguousarray(layer.weight_q.T), zx, 0, layer.bias_q, out)
        return _ref_qconv(inp, layer.weight_q, zx, 0, layer.bias_q, out, padding=1)

    for layer, inp in ((lin, a), (conv, x)):
        for _ in range(2):
            assert_exact(layer(inp), expect(layer, inp))
        layer.output_scale = np.array([0.07], np.float32)  # a replaced buffer: a new spec
        layer.input_zero_point = np.array([3], np.int32)  # read at every call
        assert_exact(layer(inp), expect(layer, inp))
        layer.weight_q = np.ascontiguousarray(-layer.weight_q)  # repacked
        assert_exact(layer(inp), expect(layer, inp))


def test_packed_objects_and_a_used_low_rank_layer_copy_and_pickle():
    """Packed weights hold cffi pointers, which neither copy nor pickle: a copy is packed
    anew from its own arrays and gives the original's results, bit for bit, and runs on
    its own buffers (the original's can go)."""
    import copy
    import pickle

    from refcompress.lowrank import LowRankLinear

    rng = np.random.default_rng(5)
    b = rng.integers(-128, 128, (37, 19)).astype(np.int8)
    a = rng.integers(0, 256, (3, 37)).astype(np.uint8)
    for zb in (-3, rng.integers(-128, 128, 19)):
        pw = kernels.pack_weights(b, zb)
        want = kernels.qgemm(a, pw, 7)
        for dup in (copy.deepcopy(pw), pickle.loads(pickle.dumps(pw))):
            assert dup.packed is not pw.packed and dup.per_column == pw.per_column
            assert_exact(kernels.qgemm(a, dup, 7), want)
    v, u = rng.standard_normal((5, 24)).astype(np.float32), rng.standard_normal((11, 5)).astype(np.float32)
    bias, x = rng.standard_normal(11).astype(np.float32), rng.standard_normal((4, 24)).astype(np.float32)
    packed = kernels.pack_lowrank(v, u, bias)
    q = kernels.QuantizedLowRank.calibrate(v, u, bias, x)
    want_f, want_q = kernels.lowrank_linear(x, packed), kernels.lowrank_linear_q8(q.quantize_input(x), q)
    for dup in (copy.deepcopy(packed), pickle.loads(pickle.dumps(packed))):
        np.testing.assert_array_equal(kernels.lowrank_linear(x, dup), want_f)
    for dup in (copy.deepcopy(q), pickle.loads(pickle.dumps(q))):
        assert dup.packed_v.packed is not q.packed_v.packed
        assert_exact(kernels.lowrank_linear_q8(q.quantize_input(x), dup), want_q)
    layer = LowRankLinear(24, 11, 5).eval()
    y = layer(x)  # caches the packed factors
    for dup in (copy.deepcopy(layer), pickle.loads(pickle.dumps(layer))):
        np.testing.assert_array_equal(dup(x), y)
