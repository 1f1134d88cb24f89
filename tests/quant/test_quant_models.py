"""Model-level quantization: BN folding, static / weight-only / dynamic PTQ, QAT."""

import numpy as np
import pytest

import refcompress.kernels as kernels
from refcompress import nn
from refcompress import quant as Q
from refcompress.errors import ArgumentError, NotDifferentiableError, OverflowRiskError
from refcompress.quant import convert as C
from refcompress.quant import modules as M
from refcompress.quant import qat


def _toy(seed=0):
    """A small trained CNN on a separable 4-class problem of 8x8 images."""
    nn.manual_seed(seed)
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 4, 400)
    x = rng.normal(0, 0.3, (400, 1, 8, 8)).astype(np.float32)
    for c in range(4):
        x[y == c, 0, 2 * c:2 * c + 2, :] += 1.0
    model = nn.Sequential(nn.Conv2d(1, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(),
                          nn.Conv2d(6, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                          nn.Linear(8 * 16, 4))
    nn.fit(model, x, y, optimizer=nn.AdamW(list(model.parameters()), lr=1e-2), epochs=4, batch_size=50,
           progress=False)
    return model.eval(), x, y


@pytest.fixture(scope="module")
def toy():
    return _toy()


def test_fold_batchnorm_is_exact_in_eval(toy):
    model, x, _ = toy
    folded = C.fold_batchnorm(model)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded)
    np.testing.assert_allclose(folded(x), model(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("rule", ["float", "fixedpoint"])
def test_static_model_runs_in_integers_and_agrees(toy, rule):
    model, x, y = toy
    q = C.quantize_static(model, x[:200], rule=rule)
    seen = []
    for m in q:
        if isinstance(m, (M.QuantizedConv2d, M.QuantizedLinear, M.QuantizedMaxPool2d)):
            m.register_forward_hook(lambda mod, inp, out: seen.append((inp[0].dtype, out.dtype)))
    out = q(x)
    assert seen and all(i == np.uint8 and o == np.uint8 for i, o in seen)
    ref = model(x)
    assert np.mean(out.argmax(1) == ref.argmax(1)) > 0.97
    assert np.abs(out - ref).max() < 0.1 * np.abs(ref).max()


def test_integer_layers_are_bit_exact_across_backends(toy):
    model, x, _ = toy
    q = C.quantize_static(model, x[:200], rule="fixedpoint")
    with kernels.use("numpy"):
        want = q(x[:50])
    with kernels.use("c"):
        got = q(x[:50]) if kernels.variants("qgemm") else want
    np.testing.assert_array_equal(got, want)


@pytest.mark.skipif(not kernels.available()["c_built"], reason="needs the C extension")
def test_integer_layers_run_on_the_c_kernels_by_default(toy, monkeypatch):
    # the kernels give the reference's bits, so only a spy can tell that QuantizedConv2d
    # and QuantizedLinear reach the C qconv2d / qgemm when nothing is set
    import dataclasses

    from refcompress.kernels import _registry

    model, x, _ = toy
    q = C.quantize_static(model, x[:200], rule="fixedpoint")
    calls = []
    for name in ("qgemm", "qconv2d"):
        op = _registry.ops()[name]

        def c_spy(*args, _op=op, _name=name, **kwargs):
            calls.append((_name, "c"))
            return _op.c(*args, **kwargs)

        def ref_spy(*args, _op=op, _name=name, **kwargs):
            calls.append((_name, "numpy"))
            return _op.reference(*args, **kwargs)

        monkeypatch.setitem(_registry._REGISTRY, name, dataclasses.replace(op, c=c_spy, reference=ref_spy))
    q(x[:8])
    kinds = {type(m).__name__ for m in q if isinstance(m, (M.QuantizedConv2d, M.QuantizedLinear))}
    assert kinds == {"QuantizedConv2d", "QuantizedLinear"}
    assert sorted(set(calls)) == [("qconv2d", "c"), ("qgemm", "c")]
    calls.clear()
    with kernels.use("numpy"):
        q(x[:8])
    assert sorted(set(calls)) == [("qconv2d", "numpy"), ("qgemm", "numpy")]


def test_integer_model_round_trips_through_spec_and_state_dict(toy):
    model, x, _ = toy
    q = C.quantize_static(model, x[:200])
    q2 = nn.from_spec(nn.to_spec(q))
    q2.load_state_dict(q.state_dict())
    np.testing.assert_array_equal(q2.eval()(x[:20]), q(x[:20]))


def test_excluded_layers_stay_float_and_bad_names_are_refused(toy):
    model, x, _ = toy
    q = C.quantize_static(model, x[:200], exclude=["7"])
    assert isinstance(list(q)[-1], nn.Linear) and isinstance(list(q)[-2], M.DequantizeStub)
    with pytest.raises(ArgumentError, match="exclude"):
        C.quantize_static(model, x[:200], exclude=["nope"])
    with pytest.raises(ArgumentError, match="weight_bits"):
        C.quantize_static(model, x[:200], weight_bits={"nope": 4})


def test_sub_byte_activations_stay_in_range(toy):
    model, x, _ = toy
    q = C.quantize_static(model, x[:200], act_bits=4, weight_bits=4)
    codes = []
    for m in q:
        if isinstance(m, M.QuantizedConv2d):
            m.register_forward_hook(lambda mod, inp, out: codes.append(out))
    q(x[:20])
    assert all(c.max() <= 15 for c in codes)


def test_weight_only_stores_packed_bits(toy):
    model, x, _ = toy
    w4 = C.quantize_weight_only(model, 4)
    lin = list(w4)[-1]
    assert isinstance(lin, M.WeightOnlyLinear)
    assert lin.weight_packed.nbytes == (8 * 16 * 4 * 4 + 7) // 8
    assert np.mean(w4(x).argmax(1) == model(x).argmax(1)) > 0.95
    g = C.quantize_weight_only(model, 4, group_size=2, exclude=["0"])
    assert list(g)[-1].weight_scale.size == 4 * 128 // 2
    with pytest.raises(ArgumentError, match="group_size"):
        C.quantize_weight_only(model, 4, group_size=16)
    assert isinstance(list(g)[0], nn.Conv2d)
    # affine codes: unsigned 4-bit values and a zero point per scale, in conv and linear layers
    a = C.quantize_weight_only(model, 4, symmetric=False)
    for layer in (m for m in a if isinstance(m, (M.WeightOnlyLinear, M.WeightOnlyConv2d))):
        w = layer.dense_weight().reshape(layer.weight_shape[0], -1)
        assert layer.symmetric is False and layer.weight_zero_point.shape == layer.weight_scale.shape
        # each row's grid: (q - z) s for q in 0..15 holds every stored value
        q = w / layer.weight_scale[:, None] + layer.weight_zero_point[:, None]
        np.testing.assert_allclose(q, np.rint(q), atol=1e-3)
        assert q.min() > -0.5 and q.max() < 15.5
    assert np.mean(a(x).argmax(1) == model(x).argmax(1)) > 0.95


def test_dynamic_linear_is_close_to_float():
    nn.manual_seed(1)
    mlp = nn.Sequential(nn.Linear(20, 30), nn.ReLU(), nn.Linear(30, 5)).eval()
    x = np.random.default_rng(1).standard_normal((64, 20)).astype(np.float32)
    d = C.quantize_dynamic(mlp)
    assert isinstance(list(d)[0], M.DynamicQuantizedLinear)
    np.testing.assert_allclose(d(x), mlp(x), atol=0.05 * np.abs(mlp(x)).max())


def test_integer_layers_refuse_backward(toy):
    model, x, _ = toy
    q = C.quantize_static(model, x[:200])
    with pytest.raises(NotDifferentiableError):
        list(q)[1].backward(np.zeros(1))


@pytest.mark.parametrize("lsq", [False, True])
def test_qat_trains_and_converts_to_an_agreeing_integer_model(toy, lsq):
    model, x, y = toy
    q = qat.prepare_qat(model, weight_bits=4, act_bits=4, lsq=lsq)
    nn.fit(q, x, y, optimizer=nn.AdamW(list(q.parameters()), lr=1e-3), epochs=2, batch_size=50, progress=False)
    q.eval()
    sim = q(x)
    integer = qat.convert_qat(q)(x)
    assert np.mean(sim.argmax(1) == integer.argmax(1)) > 0.98
    assert np.mean(integer.argmax(1) == y) > 0.9


def test_qat_weight_gradient_is_the_straight_through_estimate():
    nn.manual_seed(2)
    lin = qat.QATLinear(5, 3, weight_bits=2)
    lin.weight.data[0, 0] = 10.0  # far outside its channel's range after the others shrink
    x = np.random.default_rng(2).standard_normal((4, 5)).astype(np.float32)
    lin.train()
    y = lin(x)
    lin.backward(np.ones_like(y))
    qp = lin.weight_qparams()
    from refcompress.quant import fake_quantize

    _, mask = fake_quantize(lin.weight.data, qp)
    np.testing.assert_allclose(lin.weight.grad, (np.ones_like(y).T @ x) * mask, rtol=1e-6)


def test_a_relu_that_does_not_follow_its_layer_is_kept_in_integers():
    nn.manual_seed(5)
    m = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.MaxPool2d(2), nn.ReLU(), nn.Flatten(), nn.Linear(64, 3)).eval()
    x = np.random.default_rng(5).standard_normal((40, 1, 8, 8)).astype(np.float32)
    q = C.quantize_static(m, x)
    assert any(isinstance(l, M.QuantizedReLU) for l in q)
    ref = m(x)
    assert np.abs(q(x) - ref).max() < 0.05 * np.abs(ref).max()


def test_integer_bit_widths_and_unquantizable_layers_are_refused(toy):
    model, x, _ = toy
    with pytest.raises(Exception, match="weight_bits"):
        C.quantize_static(model, x[:50], weight_bits=16)
    with pytest.raises(Exception, match="weight_bits"):
        qat.prepare_qat(model, weight_bits=16)
    from refcompress.lowrank import LowRankLinear

    m = nn.Sequential(nn.Flatten(), LowRankLinear(64, 10, 3))
    with pytest.raises(ArgumentError, match="no quantized form"):
        C.quantize_static(m, x[:10])


def test_converting_an_untrained_qat_model_is_refused(toy):
    model, _, _ = toy
    with pytest.raises(ArgumentError, match="never saw data"):
        qat.convert_qat(qat.prepare_qat(model))


def test_used_quantized_models_deep_copy_and_pickle():
    """Layers keep derived state between calls (packed weights, C epilogue structs holding
    pointers); a copy or a pickle must rebuild it from its own buffers, not fail on the
    pointers or share them."""
    import copy
    import pickle

    from refcompress.models import mlp_300_100, small_cnn
    from refcompress.quant import w8a8

    rng = np.random.default_rng(0)
    for make, shape in ((small_cnn, (4, 1, 8, 8)), (mlp_300_100, (4, 64))):
        x = rng.standard_normal(shape).astype(np.float32)
        q = C.quantize_static(make(np.random.default_rng(0)).eval(), x)
        y = q(x)  # used: its caches are filled
        for c in (copy.deepcopy(q), pickle.loads(pickle.dumps(q))):
            np.testing.assert_array_equal(c(x), y)
    x = rng.standard_normal((5, 96)).astype(np.float32)
    w = rng.standard_normal((8, 96)).astype(np.float32)
    for layer in (w8a8.W8A8Linear.from_float(w, None, activation="token"),
                  M.WeightOnlyLinear(96, 8, bits=4, rotate=True).set_weight(w)):
        y = layer(x)
        for c in (copy.deepcopy(layer), pickle.loads(pickle.dumps(layer))):
            np.testing.assert_array_equal(c(x), y)


def test_weight_only_affine_refuses_more_than_8_bits():
    # the zero points are a uint8 buffer: a 16-bit affine grid's zero point (~50000 here)
    # used to wrap to 236, and the layer computed with wrong weights
    lin = nn.Linear(4, 3)
    lin.weight.data = np.array([[-1, -.5, .2, .3]] * 3, np.float32)
    model = nn.Sequential(lin).eval()
    with pytest.raises(ArgumentError, match=r"bits: symmetric=False .* bits <= 8, got bits=16.*symmetric=True"):
        C.quantize_weight_only(model, 16, symmetric=False)
    with pytest.raises(ArgumentError, match="bits <= 8"):
        C.quantize_weight_only(model, 16, group_size=2, symmetric=False)
    layer = M.WeightOnlyLinear(4, 3, bits=16, symmetric=False)
    with pytest.raises(ArgumentError, match="bits <= 8"):
        layer.set_quantized(np.zeros((3, 4), np.uint8), np.ones(3, np.float32), zero_point=np.zeros(3, np.int32))
    # symmetric 16-bit weights stay supported and exact to the 16-bit grid
    s = C.quantize_weight_only(model, 16)
    np.testing.assert_allclose(s[0].dense_weight(), lin.weight.data, atol=1e-4)


def test_static_refuses_a_bias_beyond_int32_at_conversion():
    # inputs ~1e-6 give s_x ~ 1e-8: b / (s_x s_w) ~ 1.8e10 was saturated to int32 silently
    # and the model failed at its first forward with a negative K bound
    lin = nn.Linear(4, 2)
    lin.bias.data = np.array([1.0, -1.0], np.float32)
    model = nn.Sequential(lin).eval()
    x = (np.random.default_rng(0).standard_normal((32, 4)) * 1e-6).astype(np.float32)
    with pytest.raises(OverflowRiskError, match=r"layer '0': bias / \(s_x s_w\) reaches .* beyond int32.*too small"):
        C.quantize_static(model, x)
    # the bias fits int32 but leaves no room for 64 products: refused too
    lin = nn.Linear(64, 2)
    x = np.random.default_rng(1).standard_normal((32, 64)).astype(np.float32)
    s_x = float(Q.calibrate(x, Q.QuantSpec(8, signed=False, symmetric=False, narrow_range=False)).scale)
    s_w = Q.calibrate(lin.weight.data, Q.QuantSpec(8, granularity="channel", axis=0)).scale.astype(np.float64)
    lin.bias.data = (2.147e9 * s_x * s_w).astype(np.float32)  # room for ~30 products of 128 x 127
    with pytest.raises(OverflowRiskError, match=r"layer '0': the int32 accumulation of 64 products"):
        C.quantize_static(nn.Sequential(lin).eval(), x)
    lin.bias.data = (1e6 * s_x * s_w).astype(np.float32)  # room to spare: converts and runs
    C.quantize_static(nn.Sequential(lin).eval(), x)(x)


def test_convert_qat_keeps_a_relu_after_dropout_in_integers():
    # prepare_qat and quantize_static accept the ReLU that a Dropout separates from its
    # layer; convert_qat refused it ("has no integer form") and now uses the same rule
    nn.manual_seed(6)
    m = nn.Sequential(nn.Linear(4, 5), nn.Dropout(0.1), nn.ReLU(), nn.Linear(5, 2)).eval()
    x = np.random.default_rng(0).standard_normal((64, 4)).astype(np.float32)
    q = qat.prepare_qat(m)
    q(x)
    q.eval()
    integer = qat.convert_qat(q)
    assert [type(l) for l in integer][2:4] == [M.QuantizedReLU, M.QuantizedLinear]  # Dropout dropped
    step = float(list(integer)[-1].scale[0])
    assert np.abs(integer(x) - q(x)).max() <= 1.01 * step  # one output step, as every converted model
    assert type(C.quantize_static(m, x)[2]) is M.QuantizedReLU


def test_conversion_sizes_and_observers_are_validated():
    lin = nn.Linear(4, 4)
    model = nn.Sequential(lin).eval()
    x = np.random.default_rng(0).standard_normal((8, 4)).astype(np.float32)
    for g in (0, -2):  # was a ZeroDivisionError
        with pytest.raises(ArgumentError, match="group_size: expected an integer in \\[1, inf\\]"):
            C.quantize_weight_only(model, 4, group_size=g)
        with pytest.raises(ArgumentError, match="group_size"):
            M.WeightOnlyLinear(4, 4, group_size=g)
    for b in (0, -1):  # calibrated nothing, then failed on the never-run observers
        with pytest.raises(ArgumentError, match="batch_size: expected an integer in \\[1, inf\\]"):
            C.quantize_static(model, x, batch_size=b)
        with pytest.raises(ArgumentError, match="batch_size"):
            C.quantize_weights_corrected(model, x, 4, batch_size=b)
    # the KL observer calibrates symmetric ranges; static PTQ's activations are affine
    with pytest.raises(ArgumentError, match="HistogramKLObserver calibrates symmetric"):
        C.quantize_static(model, x, observer=Q.HistogramKLObserver)
