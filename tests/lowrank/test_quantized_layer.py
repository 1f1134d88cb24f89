"""QuantizedLowRankLinear: LowRankLinear's int8 inference form on the fused int8 kernel."""

import copy
import pickle

import numpy as np
import pytest

import refcompress.kernels as kernels
from refcompress import io, nn
from refcompress import prune as P
from refcompress import lowrank as lr
from refcompress.errors import ArgumentError, DTypeError, NotDifferentiableError, ShapeError
from refcompress.testing import assert_exact, kernel_variants

Q8 = kernel_variants("lowrank_linear_q8")


def _layers(n=40, m=30, r=8, bias=True, seed=0):
    rng = np.random.default_rng(seed)
    nn.manual_seed(seed)
    float_layer = lr.LowRankLinear.from_linear(nn.Linear(n, m, bias=bias), r).eval()
    calib = rng.standard_normal((128, n)).astype(np.float32)
    return float_layer, lr.QuantizedLowRankLinear.from_lowrank(float_layer, calib), rng


@pytest.mark.parametrize("variant", Q8, ids=lambda v: f"{v[0]}-{v[1]}" if v[1] else v[0])
def test_forward_is_the_int8_kernel_on_its_codes_bit_exact(variant):
    float_layer, q, rng = _layers()
    x = rng.standard_normal((37, 40)).astype(np.float32)
    with kernels.use("numpy"):
        want = kernels.lowrank_linear_q8(x, q.quantized())
    with kernels.use(*variant):
        assert_exact(q(x), want, what="QuantizedLowRankLinear")
        assert_exact(q(x.reshape(37, 1, 40)), want.reshape(37, 1, 30), what="3-D input")
        assert_exact(q(x[0]), want[0], what="1-D input")
    # the codes are the float factors quantized per row, and the layer approximates them
    assert q.v_q.dtype == np.int8 and q.u_q.dtype == np.int8 and int(np.abs(q.v_q).max()) == 127
    y = float_layer(x)
    assert np.max(np.abs(q(x) - y)) < 0.03 * np.max(np.abs(y))


def test_state_holds_int8_codes_and_every_copy_gives_the_same_bits(tmp_path):
    _, q, rng = _layers(bias=False, seed=3)
    x = rng.standard_normal((9, 40)).astype(np.float32)
    y = q(x)
    sd = q.state_dict()
    assert sd["v_q"].dtype == np.int8 and sd["u_q"].dtype == np.int8 and "bias" not in sd
    weight_bytes = sum(a.nbytes for k, a in sd.items() if k in ("v_q", "u_q"))
    assert weight_bytes == (40 + 30) * 8  # one byte per factor entry
    again = nn.from_spec(nn.to_spec(q))
    again.load_state_dict(sd)
    assert_exact(again(x), y, what="spec + state dict")
    assert_exact(pickle.loads(pickle.dumps(q))(x), y, what="pickle")
    assert_exact(copy.deepcopy(q)(x), y, what="deepcopy")
    for name in ("m.npz", "m.safetensors"):
        loaded = io.load(io.save(nn.Sequential(q), str(tmp_path / name)))
        assert_exact(loaded(x), y, what=name)


def test_new_state_rebuilds_the_kernel_layer():
    _, a, rng = _layers(seed=1)
    _, b, _ = _layers(seed=2)
    x = rng.standard_normal((4, 40)).astype(np.float32)
    a(x)  # the kernel layer of a's codes is made and kept
    a.load_state_dict(b.state_dict())
    assert_exact(a(x), b(x), what="after load_state_dict")
    a.v_q[...] = 0  # in place: not seen until the cache is dropped (documented)
    assert_exact(a(x), b(x), what="in-place edit, cache kept")
    a.clear_cache()
    y = a(x)  # v = 0: h is its zero point, so every row of y is the bias
    assert_exact(y, np.broadcast_to(y[0], y.shape), what="v = 0")
    assert not np.array_equal(y, b(x))


def test_bad_inputs_name_the_argument():
    float_layer, q, _ = _layers()
    with pytest.raises(ArgumentError, match=r"x: expected float32 \[\.\.\., 40\], got float64"):
        q(np.zeros((2, 40)))
    with pytest.raises(ArgumentError, match="x: expected float32"):
        q(np.zeros((2, 41), np.float32))
    with pytest.raises(ArgumentError, match=r"calibration: expected float32 inputs of shape \(N, 40\)"):
        lr.QuantizedLowRankLinear.from_lowrank(float_layer, np.zeros((5, 41), np.float32))
    with pytest.raises(DTypeError, match="layer: expected a LowRankLinear, got Linear"):
        lr.QuantizedLowRankLinear.from_lowrank(nn.Linear(40, 30), np.zeros((5, 40), np.float32))
    with pytest.raises(NotDifferentiableError, match="QuantizedLowRankLinear is an int8 inference layer"):
        q.backward(np.zeros((2, 30), np.float32))
    with pytest.raises(ArgumentError, match=r"calibration: expected float32 inputs of shape \(N, 40\), N >= 1"):
        lr.QuantizedLowRankLinear.from_lowrank(float_layer, np.zeros((0, 40), np.float32))
    with pytest.raises(DTypeError, match="calibration: expected dtype float32"):
        lr.QuantizedLowRankLinear.from_lowrank(float_layer, np.zeros((5, 40)))
    with pytest.raises(ArgumentError, match="calibration: expected finite"):
        lr.QuantizedLowRankLinear.from_lowrank(float_layer, np.full((5, 40), np.nan, np.float32))
    sparse = lr.LowRankLinear.from_linear(nn.Linear(40, 30), 8)
    sparse.first = P.SparseLinear.from_dense(sparse.first.weight.data)
    with pytest.raises(ArgumentError, match="layer: expected two dense Linear factors, got SparseLinear"):
        lr.QuantizedLowRankLinear.from_lowrank(sparse, np.zeros((5, 40), np.float32))


def test_the_int8_layer_shares_no_memory_with_the_float_layer():
    float_layer, q, rng = _layers(seed=4)
    x = rng.standard_normal((3, 40)).astype(np.float32)
    y = q(x)
    for p in float_layer.parameters():
        p.data += 100  # a later edit (or training) of the float layer
    assert_exact(q(x), y, what="after editing the float layer")
    copy_ = nn.from_spec(nn.to_spec(q))
    copy_.load_state_dict(q.state_dict())
    assert_exact(copy_(x), y, what="a copy through the state dict")
    for buf in q.state_dict().values():
        assert not any(np.shares_memory(buf, p.data) for p in float_layer.parameters())


def test_from_codes_checks_the_codes():
    _, q, _ = _layers()
    k = q.quantized()
    args = [k.v_q, k.v_scale, k.u_q, k.u_scale, k.bias, k.x_scale, k.x_zero_point, k.h_scale, k.h_zero_point]

    def call(i, value):
        a = list(args)
        a[i] = value
        return kernels.QuantizedLowRank.from_codes(*a)

    with pytest.raises(DTypeError, match="v_q: expected dtype int8"):
        call(0, k.v_q.astype(np.int16))
    with pytest.raises(ArgumentError, match=r"u_q: expected codes in the narrow range \[-127, 127\]"):
        call(2, np.full_like(k.u_q, -128))
    with pytest.raises(ShapeError, match=r"u_q: expected shape \(m, 8\)"):
        call(2, np.zeros((30, 7), np.int8))
    with pytest.raises(ShapeError, match="v_scale"):
        call(1, np.ones(7, np.float32))
    with pytest.raises(ArgumentError, match="u_scale: expected scales > 0"):
        call(3, np.zeros(30, np.float32))
    with pytest.raises(ArgumentError, match="x_zero_point"):
        call(6, 256)
    with pytest.raises(ShapeError, match=r"v_q: expected a rank r >= 1 and n >= 1"):
        kernels.QuantizedLowRank.from_codes(np.zeros((0, 40), np.int8), np.ones(0, np.float32),
                                            np.zeros((30, 0), np.int8), k.u_scale, None, 0.1, 0, 0.1, 0)
    with pytest.raises(ArgumentError, match="bias: expected finite"):
        call(4, np.full(30, np.nan, np.float32))


def test_a_kernel_layer_pickled_before_it_kept_its_float_bias_still_runs():
    _, q, rng = _layers(seed=5)
    k = q.quantized()
    x = rng.standard_normal((3, 40)).astype(np.float32)
    state = {key: v for key, v in k.__dict__.items() if key not in k._C_STATE and key != "bias"}
    old = k.__reduce__()[0](state)
    assert old.bias is None
    assert_exact(kernels.lowrank_linear_q8(x, old), kernels.lowrank_linear_q8(x, k), what="old pickle")


@pytest.mark.parametrize("variant", Q8, ids=lambda v: f"{v[0]}-{v[1]}" if v[1] else v[0])
def test_a_dead_output_row_converts_and_keeps_its_bias(variant):
    # A Linear with a dead output neuron: its row of the second factor is ~1e-16, so the
    # old s_u = max|u_j| / 127 ~ 1e-18 made bias_j / (s_h s_u_j) overflow the int32 sum
    # and from_lowrank refused the layer.
    rng = np.random.default_rng(0)
    nn.manual_seed(0)
    lin = nn.Linear(32, 16, rng=rng)
    lin.weight.data[0] = 0.0
    float_layer = lr.LowRankLinear.from_linear(lin, 8).eval()
    assert 0 < np.abs(float_layer.second.weight.data[0]).max() < 1e-12
    x = rng.standard_normal((64, 32)).astype(np.float32)
    q = lr.QuantizedLowRankLinear.from_lowrank(float_layer, x)
    assert np.all(q.u_q[0] == 0)  # the tiny row's codes round to 0, as they should
    with kernels.use("numpy"):
        want = kernels.lowrank_linear_q8(x, q.quantized())
    with kernels.use(*variant):
        got = q(x)
    assert_exact(got, want, what="dead row")
    y = float_layer(x)
    assert np.max(np.abs(got - y)) < 0.03 * np.max(np.abs(y))
    np.testing.assert_allclose(got[:, 0], lin.bias.data[0], rtol=1e-6)
    # (a) a row of the trained factor pruned to exactly 0 after factoring
    layer = lr.LowRankLinear.from_linear(nn.Linear(32, 16, rng=rng), 8).eval()
    layer.second.weight.data[0] = 0.0
    layer.clear_cache()
    q = lr.QuantizedLowRankLinear.from_lowrank(layer, x)
    np.testing.assert_allclose(q(x)[:, 0], layer.second.bias.data[0], rtol=1e-6)


def test_all_zero_weights_with_a_bias_give_the_bias():
    # h is constant 0, so h_scale falls back to 1; s_u from the bias alone keeps the bias
    # (before: s_h = s_u = 1, the bias rounded to whole units, i.e. q(x) = 0).
    rng = np.random.default_rng(0)
    lin = nn.Linear(8, 4, rng=rng)
    lin.weight.data[:] = 0.0
    layer = lr.LowRankLinear.from_linear(lin, 2).eval()
    x = rng.standard_normal((3, 8)).astype(np.float32)
    q = lr.QuantizedLowRankLinear.from_lowrank(layer, x)
    for variant in Q8:
        with kernels.use(*variant):
            np.testing.assert_allclose(q(x), np.broadcast_to(lin.bias.data, (3, 4)), rtol=1e-6)


def test_backward_raises_not_differentiable_error():
    # distill's trainer catches NotDifferentiableError (as the quant package's integer
    # layers raise), not the bare NotImplementedError of Module.backward
    _, q, rng = _layers()
    q(rng.standard_normal((4, 40)).astype(np.float32))
    with pytest.raises(NotDifferentiableError, match="QuantizedLowRankLinear is an int8 inference layer"):
        q.backward(np.ones((4, 30), np.float32))
