"""The transformer modules: gradients against finite differences (float64, tiny sizes, with
padding), attention against its per-head loop definition, masking semantics, the module
tree's names, and layer surgery / hooks on the 36 Linear layers.

Gradient tolerance: refcompress/testing/gradcheck.py (element by element).
"""

import math

import numpy as np
import pytest

from refcompress import nn
from refcompress.errors import ArgumentError, DTypeError, RefcompressError, ShapeError
from refcompress.kernels import nnops
from refcompress.testing.gradcheck import assert_grad, check_module, numeric_grad

H, HEADS, FFN = 8, 2, 16
MASK = np.array([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 0, 0, 0, 0]])


class WithMask(nn.Module):
    """x -> m(x, mask) with a fixed mask, so check_module sees a one-input module."""

    def __init__(self, m, mask):
        super().__init__()
        self.m = m
        self.mask = mask

    def forward(self, x):
        return self.m(x, self.mask)

    def backward(self, g):
        return self.m.backward(g)


class Residual(nn.Module):
    """x = [h | r] on the last axis -> m(h, r); backward concatenates (dh, dr)."""

    def __init__(self, m, n_in):
        super().__init__()
        self.m = m
        self.n_in = n_in

    def forward(self, x):
        return self.m(x[..., :self.n_in], x[..., self.n_in:])

    def backward(self, g):
        return np.concatenate(self.m.backward(g), axis=-1)


def rng_x(seed, shape):
    return np.random.default_rng(seed).standard_normal(shape)


def randomize_norms(model, seed=1):
    """LayerNorm gamma = 1, beta = 0 hide errors in their gradients: use random values."""
    rng = np.random.default_rng(seed)
    for _, m in model.named_modules():
        if isinstance(m, nn.LayerNorm):
            m.weight.data = rng.normal(1, 0.3, m.normalized_shape)
            m.bias.data = rng.normal(0, 0.3, m.normalized_shape)
    return model


# -- gradients -----------------------------------------------------------------------

def test_layer_norm_grad():
    m = randomize_norms(nn.LayerNorm(H, eps=1e-5).to(np.float64))
    check_module(m, rng_x(0, (3, 5, H)) * 2 + 1)


def test_layer_norm_forward_is_the_nnops_reference():
    m = nn.LayerNorm(H, eps=1e-12).eval()
    x = rng_x(1, (2, 3, H)).astype(np.float32)
    np.testing.assert_array_equal(m(x), nnops.layer_norm(x, m.weight.data, m.bias.data, 1e-12))


def test_gelu_grad_and_derivative_formula():
    x = rng_x(2, (4, 6)) * 2
    check_module(nn.GELU(), x)
    g = nn.GELU().to(np.float64).train()
    g(x)
    d = g.backward(np.ones_like(x))
    exact = np.vectorize(lambda v: 0.5 * (1 + math.erf(v / math.sqrt(2)))
                         + v * math.exp(-v * v / 2) / math.sqrt(2 * math.pi))(x)
    np.testing.assert_allclose(d, exact, atol=2 * nnops.ERF_ABS_ERROR)


def test_tanh_and_softmax_grad():
    check_module(nn.Tanh(), rng_x(3, (3, 4)))
    check_module(nn.Softmax(-1), rng_x(4, (2, 3, 5)))
    check_module(nn.Softmax(1), rng_x(5, (2, 3, 5)))


def test_embedding_grad_accumulates_repeated_rows_and_skips_padding():
    emb = nn.Embedding(6, 4, padding_idx=0, rng=np.random.default_rng(0)).to(np.float64).train()
    ids = np.array([[1, 3, 3, 0], [5, 1, 0, 0]])
    R = rng_x(6, ids.shape + (4,))
    emb.zero_grad()
    emb(ids)
    assert emb.backward(R) is None                # ids have no gradient
    num = numeric_grad(lambda: float(np.sum(emb(ids) * R)), emb.weight.data)
    num[0] = 0.0                                  # the padding row is frozen, as in PyTorch
    assert_grad(num, emb.weight.grad, "embedding weight")
    np.testing.assert_allclose(emb.weight.grad[3], R[0, 1] + R[0, 2])
    assert np.all(emb.weight.grad[[0, 2, 4]] == 0)


def test_embedding_refuses_bad_ids():
    emb = nn.Embedding(6, 4)
    with pytest.raises(ArgumentError, match=r"ids: expected ids in \[0, 5\], got values in \[0, 6\]"):
        emb(np.array([[0, 6]]))
    with pytest.raises(ArgumentError, match="ids"):
        emb(np.array([-1]))
    with pytest.raises(DTypeError, match="ids: expected an integer array"):
        emb(np.array([1.0]))
    with pytest.raises(ArgumentError, match="padding_idx"):
        nn.Embedding(6, 4, padding_idx=6)


def test_self_attention_grad_with_padding():
    att = randomize_norms(nn.MultiHeadSelfAttention(H, HEADS, rng=np.random.default_rng(0)))
    check_module(WithMask(att, MASK), rng_x(7, (3, 5, H)))


@pytest.mark.parametrize("name", ["BertSelfOutput", "BertOutput"])
def test_dense_add_norm_grad(name):
    n_in = H if name == "BertSelfOutput" else FFN
    m = nn.BertSelfOutput(H) if n_in == H else nn.BertOutput(FFN, H)
    check_module(Residual(randomize_norms(m), n_in), rng_x(8, (2, 4, n_in + H)))


def test_intermediate_and_pooler_grad():
    check_module(nn.BertIntermediate(H, FFN, rng=np.random.default_rng(1)), rng_x(9, (2, 3, H)))
    check_module(nn.BertPooler(H, rng=np.random.default_rng(2)), rng_x(10, (2, 3, H)))


def test_full_bert_layer_grad_with_padding():
    layer = randomize_norms(nn.BertLayer(H, HEADS, FFN, layer_norm_eps=1e-12, rng=np.random.default_rng(3)))
    check_module(WithMask(layer, MASK), rng_x(11, (3, 5, H)))


def test_bert_model_parameter_grads_through_embeddings():
    rng = np.random.default_rng(4)
    model = nn.BertModel(vocab_size=11, hidden_size=H, num_hidden_layers=1, num_attention_heads=HEADS,
                         intermediate_size=FFN, max_position_embeddings=6, add_pooling_layer=False, rng=rng)
    model = randomize_norms(model).to(np.float64).train()
    ids = np.array([[2, 5, 5, 7], [3, 9, 0, 0]])
    mask = (ids > 0).astype(np.int64)
    types = np.array([[0, 0, 1, 1], [0, 1, 0, 0]])
    R = rng_x(12, (2, 4, H))
    model.zero_grad()
    model(ids, mask, types)
    assert model.backward(R) is None
    loss = lambda: float(np.sum(model(ids, mask, types) * R))
    for name in ["embeddings.word_embeddings.weight", "embeddings.position_embeddings.weight",
                 "embeddings.token_type_embeddings.weight", "embeddings.LayerNorm.bias",
                 "encoder.layer.0.attention.self.key.weight", "encoder.layer.0.output.dense.bias"]:
        p = dict(model.named_parameters())[name]
        num = numeric_grad(loss, p.data)
        if name == "embeddings.word_embeddings.weight":
            num[0] = 0.0                          # padding_idx = 0 gets no gradient
        assert_grad(num, p.grad, name)


# -- attention semantics -------------------------------------------------------------

def naive_attention(att, x, mask):
    """The definition, one batch row and one head at a time, with padded keys removed."""
    W = {n: (getattr(att, n).weight.data, getattr(att, n).bias.data) for n in ("query", "key", "value")}
    B, S, _ = x.shape
    d = H // HEADS
    out = np.zeros_like(x)
    for b in range(B):
        keep = np.flatnonzero(mask[b])
        q, k, v = (x[b] @ W[n][0].T + W[n][1] for n in ("query", "key", "value"))
        for h in range(HEADS):
            sl = slice(h * d, (h + 1) * d)
            s = q[:, sl] @ k[keep, sl].T / math.sqrt(d)
            p = np.exp(s - s.max(axis=1, keepdims=True))
            p /= p.sum(axis=1, keepdims=True)
            out[b, :, sl] = p @ v[keep, sl]
    return out


def test_attention_equals_per_head_definition():
    att = nn.MultiHeadSelfAttention(H, HEADS, rng=np.random.default_rng(5)).to(np.float64).eval()
    x = rng_x(13, (3, 5, H))
    np.testing.assert_allclose(att(x, MASK), naive_attention(att, x, MASK), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(att(x, None), naive_attention(att, x, np.ones((3, 5))), rtol=1e-12, atol=1e-12)


def test_padding_does_not_change_real_tokens_and_fully_padded_rows_are_finite():
    model = nn.BertModel(vocab_size=20, hidden_size=H, num_hidden_layers=2, num_attention_heads=HEADS,
                         intermediate_size=FFN, max_position_embeddings=8, rng=np.random.default_rng(6)).eval()
    ids = np.array([[5, 6, 7]])
    short = model(ids, np.ones((1, 3), np.int64))
    padded = model(np.array([[5, 6, 7, 13, 2]]), np.array([[1, 1, 1, 0, 0]]))
    np.testing.assert_allclose(padded[:, :3], short, rtol=1e-5, atol=1e-5)
    empty = model(np.array([[5, 6, 7]]), np.zeros((1, 3), np.int64))
    assert np.all(np.isfinite(empty))


def test_attention_probabilities_are_a_hookable_child():
    model = nn.BertModel(vocab_size=20, hidden_size=H, num_hidden_layers=2, num_attention_heads=HEADS,
                         intermediate_size=FFN, max_position_embeddings=8, rng=np.random.default_rng(7)).eval()
    seen = []
    model.get_submodule("encoder.layer.1.attention.self.softmax").register_forward_hook(
        lambda m, inp, out: seen.append(out))
    model(np.array([[1, 2, 3, 4], [5, 6, 0, 0]]), np.array([[1, 1, 1, 1], [1, 1, 0, 0]]))
    (p,) = seen
    assert p.shape == (2, HEADS, 4, 4)
    np.testing.assert_allclose(p.sum(-1), 1.0, rtol=1e-6)
    assert np.all(p[1, :, :, 2:] == 0)            # padded keys get exactly zero weight


def test_attention_refuses_bad_inputs():
    att = nn.MultiHeadSelfAttention(H, HEADS)
    x = np.zeros((2, 3, H), np.float32)
    with pytest.raises(ShapeError, match="attention_mask"):
        att(x, np.ones((2, 4)))
    with pytest.raises(ArgumentError, match="attention_mask: expected entries 0"):
        att(x, np.full((2, 3), 2))
    with pytest.raises(ShapeError, match="x: expected last dimension 8"):
        att(np.zeros((2, 3, 4), np.float32))
    with pytest.raises(ArgumentError, match="num_heads"):
        nn.MultiHeadSelfAttention(8, 3)
    att.eval()(x)
    with pytest.raises(RefcompressError, match="no cached forward"):
        att.backward(x)


def test_bert_model_refuses_too_long_and_out_of_range_ids():
    model = nn.BertModel(vocab_size=20, hidden_size=H, num_hidden_layers=1, num_attention_heads=HEADS,
                         intermediate_size=FFN, max_position_embeddings=4, type_vocab_size=2)
    with pytest.raises(ShapeError, match="max_position_embeddings=4"):
        model(np.zeros((1, 5), np.int64))
    with pytest.raises(ArgumentError, match=r"input_ids: expected ids in \[0, 19\]"):
        model(np.array([[1, 20]]))
    with pytest.raises(ArgumentError, match="token_type_ids"):
        model(np.array([[1, 2]]), None, np.array([[0, 2]]))


# -- names, surgery, hooks, specs ----------------------------------------------------

def tiny_model(layers=2):
    return nn.BertModel(vocab_size=20, hidden_size=H, num_hidden_layers=layers, num_attention_heads=HEADS,
                        intermediate_size=FFN, max_position_embeddings=8, rng=np.random.default_rng(8))


def test_state_dict_names_are_hugging_faces():
    keys = set(tiny_model(2).state_dict())
    per_layer = [f"attention.self.{n}.{p}" for n in ("query", "key", "value") for p in ("weight", "bias")]
    per_layer += [f"{m}.{p}" for m in ("attention.output.dense", "attention.output.LayerNorm",
                                       "intermediate.dense", "output.dense", "output.LayerNorm")
                  for p in ("weight", "bias")]
    expected = {"embeddings.position_ids", "pooler.dense.weight", "pooler.dense.bias"}
    expected |= {f"embeddings.{t}.weight" for t in ("word_embeddings", "position_embeddings", "token_type_embeddings")}
    expected |= {"embeddings.LayerNorm.weight", "embeddings.LayerNorm.bias"}
    expected |= {f"encoder.layer.{i}.{k}" for i in range(2) for k in per_layer}
    assert keys == expected


def test_linear_layers_can_be_swapped_and_hooked():
    model = tiny_model(2).eval()
    linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and n.startswith("encoder")]
    assert len(linears) == 12                     # 6 per layer: q, k, v, attention out, FFN in, FFN out
    ids, mask = np.array([[1, 2, 3], [4, 5, 0]]), np.array([[1, 1, 1], [1, 1, 0]])
    ref = model(ids, mask)

    class Doubler(nn.Module):                     # any module with forward(x [M, in]) -> [M, out]
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            return 2 * self.inner(x) - self.inner.bias.data

    captured = []
    target = "encoder.layer.1.intermediate.dense"
    h = model.get_submodule(target).register_forward_hook(lambda m, inp, out: captured.append(inp[0]))
    model(ids, mask)
    h.remove()
    assert captured[0].shape == (6, H)            # rows are the B*S tokens
    old = model.get_submodule(target)
    model.set_submodule(target, Doubler(old))
    assert not np.allclose(model(ids, mask), ref)
    old.weight.data = old.weight.data * 0.5       # 2 (W/2) x + b == W x + b
    np.testing.assert_allclose(model(ids, mask), ref, rtol=1e-5, atol=1e-5)


def test_spec_round_trip_and_float32_forward():
    model = tiny_model(2).eval()
    clone = nn.from_spec(nn.to_spec(model))
    clone.load_state_dict(model.state_dict())
    clone.eval()
    ids, mask = np.array([[1, 2, 3], [4, 5, 0]]), np.array([[1, 1, 1], [1, 1, 0]])
    out = model(ids, mask)
    assert out.dtype == np.float32 and out.shape == (2, 3, H)
    np.testing.assert_array_equal(clone(ids, mask), out)
    assert nn.to_spec(model)["config"]["num_hidden_layers"] == 2


def test_attention_distillation_gradient_enters_through_the_softmax_child():
    """L = sum(R * hidden) + sum(Rp * A_0), A_0 the layer-0 attention probabilities read and
    fed back with refcompress.distill.Taps: the parameter gradient is the finite difference."""
    from refcompress.distill import Taps

    model = randomize_norms(tiny_model(2)).to(np.float64).train()
    ids, mask = np.array([[1, 2, 3, 4], [5, 6, 0, 0]]), np.array([[1, 1, 1, 1], [1, 1, 0, 0]])
    name = "encoder.layer.0.attention.self.softmax"
    R, Rp = rng_x(14, (2, 4, H)), rng_x(15, (2, HEADS, 4, 4))
    with Taps(model, [name], inject=True) as taps:
        model.zero_grad()
        model(ids, mask)
        taps.add_grad(name, Rp)
        model.backward(R)
        p = dict(model.named_parameters())["encoder.layer.0.attention.self.query.weight"]

        def loss():
            out = model(ids, mask)
            return float(np.sum(out * R) + np.sum(taps[name] * Rp))

        assert_grad(numeric_grad(loss, p.data), p.grad, "query weight via attention probabilities")


# -- the fused attention kernel in eval mode ---------------------------------------------

def test_eval_uses_the_fused_kernel_within_its_bound_of_the_training_path(monkeypatch):
    import importlib

    from refcompress.nn import transformer as T
    from refcompress.testing.nnops import assert_within_bound

    A = importlib.import_module("refcompress.kernels.attention")
    calls = []
    monkeypatch.setattr(T, "kernel_attention", lambda *a: calls.append(1) or A.attention(*a))
    heads, hidden = 4, 4 * 33  # d = 33: a P V column tail
    att = nn.MultiHeadSelfAttention(hidden, heads, rng=np.random.default_rng(8))
    rng = np.random.default_rng(9)
    x = rng.standard_normal((3, 17, hidden)).astype(np.float32)
    mask = np.ones((3, 17), np.int64)
    mask[1, 9:] = 0
    mask[2] = 0  # a fully padded sentence: finfo.min keys, uniform P on both paths
    for m in (mask, None):
        train = att.train()(x, m)
        fused = att.eval()(x, m)
        assert calls and att._cache is None
        calls.clear()
        x2 = x.reshape(-1, hidden)
        q, k, v = (getattr(att, n)(x2).reshape(x.shape) for n in ("query", "key", "value"))
        add = None if m is None else T.additive_attention_mask(m, 3, 17, np.float32).reshape(3, 17)
        scale = 1.0 / math.sqrt(33)
        exact = A.attention_exact(q, k, v, heads, scale, add)
        bound = A.attention_error_bound(q, k, v, heads, scale, add)
        assert_within_bound(fused, exact, bound, what="fused")
        assert_within_bound(train, exact, bound, what="training path")
        np.testing.assert_allclose(fused, train, rtol=0, atol=float(np.max(2 * bound)))


def test_hooked_softmax_or_float64_keeps_the_unfused_path(monkeypatch):
    from refcompress.nn import transformer as T

    calls = []
    monkeypatch.setattr(T, "kernel_attention", lambda *a: calls.append(1))
    att = nn.MultiHeadSelfAttention(H, HEADS, rng=np.random.default_rng(10)).eval()
    x = rng_x(11, (2, 5, H)).astype(np.float32)
    seen = []
    handle = att.softmax.register_forward_hook(lambda mod, inp, out: seen.append(out))
    out = att(x, MASK[:2])
    assert not calls and seen and seen[0].shape == (2, HEADS, 5, 5) and np.all(np.isfinite(out))
    handle.remove()
    att.to(np.float64)(x.astype(np.float64), MASK[:2])
    assert not calls


def test_modules_take_keyword_arguments_and_hooks_see_them_on_request():
    model = nn.BertModel(vocab_size=20, hidden_size=H, num_hidden_layers=1, num_attention_heads=HEADS,
                         intermediate_size=8, max_position_embeddings=8, rng=np.random.default_rng(0))
    ids = np.random.default_rng(1).integers(0, 20, (2, 5))
    mask = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    plain, kw = [], []
    model.register_forward_hook(lambda m, inputs, out: plain.append(len(inputs)))
    model.register_forward_hook(lambda m, inputs, kwargs, out: kw.append(sorted(kwargs)),
                                with_kwargs=True)
    out = model(ids, attention_mask=mask)
    np.testing.assert_array_equal(out, model(ids, mask))
    assert plain[0] == 1 and kw[0] == ["attention_mask"]
    att = model.encoder.layer[0].attention.self
    x = np.random.default_rng(2).standard_normal((2, 5, H)).astype(np.float32)
    np.testing.assert_array_equal(att(x, attention_mask=mask), att(x, mask))


def test_gelu_and_softmax_accept_float16_like_the_other_parameterless_layers():
    x = np.random.default_rng(0).standard_normal((2, 3, 5)).astype(np.float16)
    g = np.random.default_rng(1).standard_normal(x.shape).astype(np.float16)
    for layer, dim in ((nn.GELU(), None), (nn.Softmax(), -1), (nn.Softmax(dim=1), 1)):
        y = layer(x)
        assert y.dtype == np.float16 and y.shape == x.shape
        ref = type(layer)() if dim is None else nn.Softmax(dim=dim)
        y32 = ref(x.astype(np.float32))
        np.testing.assert_array_equal(y, y32.astype(np.float16))
        dx = layer.backward(g)
        assert dx.dtype == np.float16
        np.testing.assert_allclose(dx, ref.backward(g.astype(np.float32)), rtol=2e-3, atol=2e-3)
    mask = np.zeros((2, 1, 5), np.float16)
    mask[0, 0, -1] = np.finfo(np.float16).min
    p = nn.Softmax()(x, mask)
    assert p.dtype == np.float16 and np.all(p[0, :, -1] == 0)
