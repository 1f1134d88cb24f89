"""QAT of chosen Linear layers of any Module (prepare_qat_linears / convert_qat_linears):
the prepared layer trains on W8A8Linear's grid, converts to it code for code, and bad
input is refused by name.

The conversion bound, one layer, K inputs, u = 2^-24: the fake-quant layer computes
fl(sum_j x_hat_j w_hat_nj) + b with x_hat = fl((q_a - z) s_a), w_hat = fl(q_w s_w) (the
values it trains on); the integer layer computes fl(fl(float32(A) fl(s_a s_w)) + b) with A
= sum_j (q_a - z) q_w exact.  Against the exact s_a s_w A + b: the float32 dot product is off by
at most gamma_K S (any summation order, S = sum_j |x_hat_j w_hat_nj|), the two dequantize
roundings inside x_hat w_hat by 2u S, the three roundings of the epilogue by gamma_3 S, and
each bias add by u (S + |b|).  Together (K + 8) u (S + |b|) covers both, with second-order
terms to spare.
"""

import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import refcompress.kernels as kernels
from refcompress import nn
from refcompress.errors import ArgumentError, DTypeError
from refcompress.quant import (QATInputLinear, convert_qat_linears, fake_quantize, prepare_qat_linears,
                               w8a8_from_qat)
from refcompress.quant.w8a8 import ACTIVATION_SPEC, WEIGHT_SPEC, W8A8Linear
from refcompress.testing import kernel_variants

sys.path.insert(0, str(Path(__file__).parents[1] / "bert"))
from _tiny_bert import tiny_bert  # noqa: E402

U = 2.0 ** -24
ENCODER = ("attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense",
           "intermediate.dense", "output.dense")


def _encoder_names(layers=2):
    return [f"encoder.layer.{i}.{s}" for i in range(layers) for s in ENCODER]


def conversion_bound(x_hat, w_hat, bias, K):
    S = np.abs(x_hat.astype(np.float64)) @ np.abs(w_hat.astype(np.float64)).T
    b = 0.0 if bias is None else np.abs(bias.astype(np.float64))
    return (K + 8) * U * (S + b)


def _prepared_layer(in_f, out_f, rows, weight_bits, lsq, bias, seed):
    rng = np.random.default_rng(seed)
    lin = nn.Linear(in_f, out_f, bias, rng=rng)
    lin.weight.data[0, 0] *= 30.0  # an outlier weight: its row's scale is coarse
    x = rng.normal(0.3, 1.0, (rows, in_f)).astype(np.float32)
    x[:, 0] *= 20.0  # an outlier channel, as BERT's FFN inputs have
    q = prepare_qat_linears(nn.Sequential(lin), weight_bits=weight_bits, lsq=lsq)
    layer = q[0]
    layer(x)  # training mode: the input range starts from this batch
    return lin, layer.eval(), x


# qgemm's tiles: MR = 6 rows (MC = 96 per block), NR = 64 output columns, K in fours
@given(in_f=st.sampled_from([1, 2, 3, 4, 5, 7, 31, 32, 33, 64, 97]), out_f=st.sampled_from([1, 3, 17, 63, 64, 65]),
       rows=st.sampled_from([1, 5, 6, 7, 13, 95, 96, 97]), weight_bits=st.integers(2, 8), lsq=st.booleans(), bias=st.booleans(),
       seed=st.integers(0, 2**16))
def test_the_converted_layer_computes_on_the_codes_the_qat_layer_trained_on(in_f, out_f, rows, weight_bits, lsq,
                                                                           bias, seed):
    _, layer, x = _prepared_layer(in_f, out_f, rows, weight_bits, lsq, bias, seed)
    lin, fq = layer.linear, layer.input_quant
    w_hat, _ = fake_quantize(lin.weight.data, lin.weight_qparams())
    x_hat, _ = fake_quantize(x, fq.qparams())
    conv = w8a8_from_qat(layer)
    assert isinstance(conv, W8A8Linear) and conv.activation == "static" and not conv.training
    # weights: the same float values, so the same int8 codes and row scales
    np.testing.assert_array_equal(conv.dense_weight(), w_hat)
    # inputs: W8A8Linear's static quantizer gives the codes of the fake quantizer
    s_a, z_a = np.float32(conv.input_scale), int(conv.input_zero_point)
    q_a = kernels.quantize(x, np.full(in_f, s_a, np.float32), np.full(in_f, z_a, np.int32), axis=1, dtype=np.uint8)
    np.testing.assert_array_equal((q_a.astype(np.float32) - np.float32(z_a)) * s_a, x_hat)
    fq_out = layer(x)
    bound = conversion_bound(x_hat, w_hat, None if lin.bias is None else lin.bias.data, in_f)
    # every variant both ops of the layer have (qgemm's own are property-tested in tests/kernels)
    both = [(b, i) for b, i in kernel_variants("qgemm") if i is None or i in kernels.variants("quantize")]
    for backend, isa in both:
        with kernels.use(backend, isa=isa):
            err = np.abs(conv(x).astype(np.float64) - fq_out)
            assert np.all(err <= bound), f"{backend} {isa}: {err.max()} > bound {bound[err > bound].min()}"


def test_the_grids_are_w8a8_linear_s():
    """8-bit QAT trains on exactly the specs W8A8Linear quantizes with."""
    layer = QATInputLinear(4, 3)
    assert layer.linear.weight_spec() == WEIGHT_SPEC
    assert layer.input_quant.qparams().spec == ACTIVATION_SPEC


def test_prepared_layer_gradient_is_the_straight_through_estimate():
    _, layer, x = _prepared_layer(9, 5, 11, 4, False, True, 3)
    layer.train()
    fq = layer.input_quant
    fq.range_max = np.array([2.0], np.float32)  # clip part of x: the input mask is not all ones
    fq.averaging_constant = 0.0  # keep that range through the next training forward
    y = layer(x)
    g = np.random.default_rng(4).standard_normal(y.shape).astype(np.float32)
    layer.zero_grad()
    gx = layer.backward(g)
    x_hat, mask_x = fake_quantize(x, fq.qparams())
    w_hat, mask_w = fake_quantize(layer.linear.weight.data, layer.linear.weight_qparams())
    assert 0 < mask_x.mean() < 1
    np.testing.assert_allclose(layer.linear.weight.grad, (g.T @ x_hat) * mask_w, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(layer.linear.bias.grad, g.sum(0), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(gx, (g @ w_hat) * mask_x, rtol=1e-5, atol=1e-5)


def _ids(seed=0, B=3, S=7, vocab=30):
    rng = np.random.default_rng(seed)
    ids = rng.integers(1, vocab, (B, S))
    mask = np.ones((B, S), np.int64)
    mask[1, 4:] = 0
    ids[mask == 0] = 0
    return ids, mask


def test_bert_prepares_by_name_and_the_original_is_untouched():
    model = tiny_bert()
    before = model.state_dict()
    names = _encoder_names()
    q = prepare_qat_linears(model, names)
    assert q is not model and q.training and not model.training
    assert [n for n, m in q.named_modules() if isinstance(m, QATInputLinear)] == names
    assert type(q.get_submodule("pooler.dense")) is nn.Linear
    ids, mask = _ids()
    h = q(ids, mask)
    q.backward(np.ones_like(h))
    for n in names:  # trained weights are separate arrays: updating them leaves the model alone
        q.get_submodule(n).linear.weight.data += 1.0
    after = model.state_dict()
    assert after.keys() == before.keys() and all(np.array_equal(after[k], before[k]) for k in before)
    assert all(type(model.get_submodule(n)) is nn.Linear for n in names)
    # the default is every nn.Linear, the pooler included
    assert "pooler.dense" in [n for n, m in prepare_qat_linears(model).named_modules() if isinstance(m, QATInputLinear)]


def test_bert_converts_to_w8a8_layers_that_match_the_fake_quant_model_layer_by_layer():
    """Each converted layer, fed the input its QAT layer saw in the fake-quant model's eval
    forward, gives that layer's output within the derived bound; the whole converted model
    runs on the integer kernels."""
    model = tiny_bert(1, hidden_size=32, num_attention_heads=4, intermediate_size=64)
    names = _encoder_names()
    q = prepare_qat_linears(model, names)
    for seed in range(3):
        q(*_ids(seed))
    conv = convert_qat_linears(q)
    q.eval()
    assert not conv.training and all(isinstance(conv.get_submodule(n), W8A8Linear) for n in names)
    seen = {}
    hooks = [q.get_submodule(n).register_forward_hook(lambda m, i, o, n=n: seen.__setitem__(n, (i[0], o)))
             for n in names]
    ids, mask = _ids(7)
    ref = q(ids, mask)
    for h in hooks:
        h.remove()
    for n in names:
        x, y_fq = seen[n]
        layer = q.get_submodule(n)
        x_hat, _ = fake_quantize(x, layer.input_quant.qparams())
        w_hat, _ = fake_quantize(layer.linear.weight.data, layer.linear.weight_qparams())
        bound = conversion_bound(x_hat, w_hat, layer.linear.bias.data, x.shape[-1])
        err = np.abs(conv.get_submodule(n)(x).astype(np.float64) - y_fq)
        assert np.all(err <= bound), f"{n}: {err.max()} > {bound[err > bound].min()}"
    out = conv(ids, mask)
    assert out.shape == ref.shape and np.all(np.isfinite(out))


def test_bad_input_is_refused_by_name():
    model = tiny_bert()
    with pytest.raises(DTypeError, match="model"):
        prepare_qat_linears("bert")
    with pytest.raises(ArgumentError, match="names: 'encoder.layer.0.attention.self' is a MultiHeadSelfAttention"):
        prepare_qat_linears(model, ["encoder.layer.0.attention.self"])
    with pytest.raises(ArgumentError, match="names: model has no submodule 'encoder.layer.9.output.dense'"):
        prepare_qat_linears(model, ["encoder.layer.9.output.dense"])
    with pytest.raises(DTypeError, match="names"):
        prepare_qat_linears(model, "pooler.dense")
    with pytest.raises(ArgumentError, match="names: expected distinct"):
        prepare_qat_linears(model, ["pooler.dense", "pooler.dense"])
    with pytest.raises(ArgumentError, match="names: expected at least one"):
        prepare_qat_linears(model, [])
    with pytest.raises(ArgumentError, match="model: a Tanh with no nn.Linear"):
        prepare_qat_linears(nn.Tanh())
    q = prepare_qat_linears(model, ["pooler.dense"])
    with pytest.raises(ArgumentError, match="names: 'pooler.dense' is a QATInputLinear"):
        prepare_qat_linears(q, ["pooler.dense"])
    for bits in (1, 9):
        with pytest.raises(ArgumentError, match="weight_bits"):
            prepare_qat_linears(model, weight_bits=bits)
        with pytest.raises(ArgumentError, match="act_bits"):
            prepare_qat_linears(model, act_bits=bits)
    with pytest.raises(ArgumentError, match="model: a BertModel with no QATInputLinear"):
        convert_qat_linears(model)
    # prepared but never run in training mode (eval forwards do not set a range)
    q = prepare_qat_linears(model, _encoder_names()).eval()
    q(*_ids())
    with pytest.raises(ArgumentError, match=r"model: the input quantizers of \['encoder.layer.0"):
        convert_qat_linears(q)
    with pytest.raises(ArgumentError, match="layer: its input quantizer never saw data"):
        w8a8_from_qat(q.get_submodule("encoder.layer.0.output.dense"))
    with pytest.raises(DTypeError, match="layer"):
        w8a8_from_qat(model.get_submodule("pooler.dense"))
    q4 = prepare_qat_linears(model, _encoder_names(), act_bits=4)
    q4(*_ids())
    with pytest.raises(ArgumentError, match=r"model: its layers quantize inputs to \[4\] bits"):
        convert_qat_linears(q4)


def test_a_prepared_model_round_trips_through_its_spec():
    model = tiny_bert()
    q = prepare_qat_linears(model, _encoder_names(), weight_bits=6)
    q(*_ids())
    clone = nn.from_spec(nn.to_spec(q))
    clone.load_state_dict(q.state_dict())
    q.eval(), clone.eval()
    np.testing.assert_array_equal(clone(*_ids(1)), q(*_ids(1)))
    assert clone.get_submodule("encoder.layer.1.output.dense").linear.weight_bits == 6


def test_a_bare_linear_is_prepared_and_converted_itself():
    lin = nn.Linear(5, 3, rng=np.random.default_rng(0))
    q = prepare_qat_linears(lin)
    assert isinstance(q, QATInputLinear) and q.training
    np.testing.assert_array_equal(q.linear.weight.data, lin.weight.data)
    assert q.linear.weight.data is not lin.weight.data
    x = np.random.default_rng(1).standard_normal((4, 5)).astype(np.float32)
    q(x)
    conv = convert_qat_linears(q)
    assert isinstance(conv, W8A8Linear)
    np.testing.assert_array_equal(conv.weight_q, w8a8_from_qat(q).weight_q)


def test_a_linear_shared_by_two_paths_is_refused_by_default():
    # named_modules lists a shared module once: preparing "every Linear" would quantize it
    # at one path and leave the other float, silently
    lin = nn.Linear(4, 4)
    with pytest.raises(ArgumentError, match=r"model: the nn.Linear at \['0', '2'\] is one module"):
        prepare_qat_linears(nn.Sequential(lin, nn.ReLU(), lin))
