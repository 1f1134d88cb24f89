"""Structured pruning: surgery keeps the function of the kept channels exactly (through
BatchNorm and Flatten), the importance criteria match their definitions, and bad requests
are refused with the argument named."""

import copy
import warnings

import numpy as np
import pytest

from refcompress import nn, prune as P
from refcompress.errors import ArgumentError, DTypeError


def cnn(seed=0):
    rng = np.random.default_rng(seed)
    m = nn.Sequential(
        nn.Conv2d(1, 6, 3, padding=1, rng=rng), nn.BatchNorm2d(6), nn.ReLU(),
        nn.Conv2d(6, 8, 3, padding=1, rng=rng), nn.BatchNorm2d(8), nn.ReLU(),
        nn.MaxPool2d(2), nn.Flatten(), nn.Linear(8 * 2 * 2, 5, rng=rng), nn.ReLU(),
        nn.Linear(5, 3, rng=rng))
    # non-trivial BatchNorm statistics and affine parameters
    for i in (1, 4):
        bn = m[i]
        c = bn.num_features
        bn.running_mean = rng.standard_normal(c).astype(np.float32)
        bn.running_var = rng.uniform(0.5, 2, c).astype(np.float32)
        bn.weight.data = rng.uniform(0.5, 1.5, c).astype(np.float32)
        bn.bias.data = rng.standard_normal(c).astype(np.float32)
    return m.eval()


def x_images(n=7, seed=1):
    return np.random.default_rng(seed).standard_normal((n, 1, 4, 4)).astype(np.float32)


def _zero_consumer_inputs(model, layer, removed):
    """The original model with the consumer's inputs from ``removed`` set to zero: what the
    pruned model must equal."""
    ref = copy.deepcopy(model)
    link = P.find_link(ref, layer)
    c = ref.get_submodule(link.consumer)
    if link.flatten:
        s = c.in_features // ref.get_submodule(layer).weight.shape[0]
        cols = (np.asarray(removed)[:, None] * s + np.arange(s)).ravel()
    else:
        cols = np.asarray(removed)
    w = c.weight.data.copy()
    w[:, cols] = 0
    c.weight.data = w
    return ref


@pytest.mark.parametrize("layer, keep", [("0", [0, 2, 5]), ("3", [1, 2, 6, 7]), ("8", [0, 4])])
def test_surgery_is_exact_on_the_kept_channels(layer, keep):
    m = cnn()
    x = x_images()
    n_out = m.get_submodule(layer).weight.shape[0]
    removed = sorted(set(range(n_out)) - set(keep))
    expected = _zero_consumer_inputs(m, layer, removed)(x)
    P.prune_outputs(m, layer, np.array(keep))
    np.testing.assert_allclose(m(x), expected, rtol=1e-5, atol=1e-5)
    assert m.get_submodule(layer).weight.shape[0] == len(keep)


def test_surgery_shrinks_batchnorm_flatten_and_consumer():
    m = cnn()
    P.prune_outputs(m, "3", np.array([0, 3, 7]))
    assert m[3].out_channels == 3 and m[3].weight.shape == (3, 6, 3, 3)
    assert m[4].num_features == 3 and m[4].running_var.shape == (3,)
    assert m[8].in_features == 12 and m[8].weight.shape == (5, 12)
    P.prune_outputs(m, "0", np.array([1, 4]))
    assert m[0].weight.shape == (2, 1, 3, 3) and m[3].weight.shape == (3, 2, 3, 3)
    assert m[1].num_features == 2
    # the pruned model still trains (backward through every reshaped layer)
    m.train()
    out = m(x_images())
    _, g = nn.cross_entropy(out, np.zeros(7, np.int64))
    m.backward(g)
    assert m[0].weight.grad.shape == (2, 1, 3, 3)


def test_surgery_refusals_name_the_problem():
    m = cnn()
    with pytest.raises(ArgumentError, match="last layer"):
        P.prune_outputs(m, "10", np.array([0]))
    with pytest.raises(ArgumentError, match="keep"):
        P.prune_outputs(m, "0", np.array([], np.int64))
    with pytest.raises(ArgumentError, match="keep"):
        P.prune_outputs(m, "0", np.array([0, 0]))
    with pytest.raises(ArgumentError, match="keep"):
        P.prune_outputs(m, "0", np.array([6]))
    with pytest.raises(DTypeError, match="keep"):
        P.prune_outputs(m, "0", np.array([0.0]))
    with pytest.raises(ArgumentError, match="ReLU"):
        P.prune_outputs(m, "2", np.array([0]))
    g = nn.Sequential(nn.Conv2d(2, 4, 1), nn.Conv2d(4, 4, 3, groups=4), nn.Flatten(), nn.Linear(4, 2))
    with pytest.raises(ArgumentError, match="grouped"):
        P.prune_outputs(g, "0", np.array([0, 1]))
    with pytest.raises(ArgumentError, match="Sequential"):
        P.find_link(nn.Linear(2, 2), "0")


def test_weight_norm_importance():
    w = np.array([[1, -2, 0], [3, 0, 4]], np.float32)
    np.testing.assert_allclose(P.weight_norm_importance(w, 1), [3, 7])
    np.testing.assert_allclose(P.weight_norm_importance(w, 2), [np.sqrt(5), 5])


def test_select_outputs_ties_and_keep_one_warning():
    np.testing.assert_array_equal(P.select_outputs(np.array([1.0, 3, 1, 1]), 0.5), [0, 1])
    with pytest.warns(RuntimeWarning, match="keeping the most important"):
        kept = P.select_outputs(np.array([1.0, 3, 2]), 1.0)
    np.testing.assert_array_equal(kept, [1])
    with pytest.raises(ArgumentError, match="amount"):
        P.select_outputs(np.ones(3), 1.5)


def _mlp_with_known_activations():
    rng = np.random.default_rng(3)
    return nn.Sequential(nn.Linear(4, 5, rng=rng), nn.ReLU(), nn.Linear(5, 3, rng=rng)).eval()


def test_activation_criteria_match_their_definitions():
    m = _mlp_with_known_activations()
    X = np.random.default_rng(4).standard_normal((40, 4)).astype(np.float32)
    y = np.random.default_rng(5).integers(0, 3, 40)
    a = np.maximum(X @ m[0].weight.data.T + m[0].bias.data, 0).astype(np.float64)
    imp = P.channel_importance(m, "mean_abs", X, batch_size=16)
    np.testing.assert_allclose(imp["0"], np.abs(a).mean(axis=0), rtol=1e-6)
    imp = P.channel_importance(m, "apoz", X, batch_size=16)
    np.testing.assert_allclose(imp["0"], 1 - (a == 0).mean(axis=0))
    # Taylor: |a * dL/da| with L the mean cross-entropy over all 40 samples (computed in
    # batches of 8): g = (p - onehot)/40 W2
    imp = P.channel_importance(m, "taylor", X, y, batch_size=8)
    W2, b2 = m[2].weight.data.astype(np.float64), m[2].bias.data.astype(np.float64)
    terms = []
    for s in range(0, 40, 8):
        logits = a[s:s + 8] @ W2.T + b2
        p = np.exp(logits - logits.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        p[np.arange(8), y[s:s + 8]] -= 1
        terms.append(np.abs(a[s:s + 8] * ((p / 40) @ W2)))
    np.testing.assert_allclose(imp["0"], np.concatenate(terms).mean(axis=0), rtol=1e-4, atol=1e-9)
    assert np.all(imp["0"] >= 0) and np.any(imp["0"] > 0)


def test_taylor_leaves_model_state_untouched():
    m = cnn()
    before = m.state_dict()
    X = x_images(12)
    y = np.arange(12) % 3
    imp = P.channel_importance(m, "taylor", X, y)
    assert set(imp) == {"0", "3", "8"} and imp["3"].shape == (8,)
    for k, v in m.state_dict().items():
        np.testing.assert_array_equal(v, before[k])
    assert not m.training and all(p.grad is None for p in m.parameters())
    assert isinstance(m[3], nn.Conv2d)  # the taps are gone


def test_criteria_need_their_data():
    m = cnn()
    with pytest.raises(ArgumentError, match="X"):
        P.channel_importance(m, "apoz")
    with pytest.raises(ArgumentError, match="y"):
        P.channel_importance(m, "taylor", x_images())
    with pytest.raises(ArgumentError, match="criterion"):
        P.channel_importance(m, "l3")


@pytest.mark.parametrize("criterion", P.CRITERIA)
def test_structured_prune_halves_the_model(criterion):
    m = cnn()
    X = x_images(10)
    y = np.arange(10) % 3
    before = sum(p.size for p in m.parameters())
    kept = P.structured_prune(m, 0.5, criterion, X, y)
    assert {k: len(v) for k, v in kept.items()} == {"0": 3, "3": 4, "8": 3}  # 5 - rint(2.5)
    assert m[0].out_channels == 3 and m[3].weight.shape == (4, 3, 3, 3) and m[8].weight.shape == (3, 16)
    assert m[10].weight.shape == (3, 3)
    assert sum(p.size for p in m.parameters()) < 0.5 * before
    assert m(X).shape == (10, 3)


def test_structured_prune_per_layer_amounts_and_empty_layer_warning():
    m = cnn()
    kept = P.structured_prune(m, {"3": 0.25})
    assert list(kept) == ["3"] and len(kept["3"]) == 6 and m[0].out_channels == 6
    with pytest.raises(ArgumentError, match="amount"):
        P.structured_prune(cnn(), {"9": 0.5})
    m = cnn()
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        P.structured_prune(m, 1.0, layers=["0"])
    assert any("keeping the most important" in str(x.message) for x in w)
    assert m[0].out_channels == 1


def test_masked_layer_keeps_a_sliced_mask_through_surgery():
    m = cnn()
    P.magnitude_prune(m, amount=0.5, layers=["3"])
    mask = P.get_mask(m[3]).copy()
    P.prune_outputs(m, "3", np.array([0, 2]))
    np.testing.assert_array_equal(P.get_mask(m[3]), mask[[0, 2]])
    P.prune_outputs(m, "0", np.array([1, 3, 4]))
    np.testing.assert_array_equal(P.get_mask(m[3]), mask[[0, 2]][:, [1, 3, 4]])
    assert np.all(m[3].weight.data[~P.get_mask(m[3])] == 0)


def _token_mlp(seed=0):
    # a Linear applied per token to [N, T, F] inputs, flattened into a classifier
    rng = np.random.default_rng(seed)
    return nn.Sequential(nn.Linear(4, 6, rng=rng), nn.ReLU(), nn.Flatten(),
                         nn.Linear(3 * 6, 2, rng=rng)).eval()


def test_surgery_on_a_linear_with_leading_dims_is_channels_last():
    m = _token_mlp()
    ref = copy.deepcopy(m)
    X = np.random.default_rng(1).standard_normal((5, 3, 4)).astype(np.float32)
    keep = np.array([0, 2, 3, 5])
    P.prune_outputs(m, "0", keep)
    # the original with the removed neurons' outputs zeroed at every token
    h = ref[1](ref[0](X))
    h[..., np.setdiff1d(np.arange(6), keep)] = 0
    np.testing.assert_allclose(m(X), ref[3](ref[2](h)), rtol=1e-5, atol=1e-6)
    assert m[0].weight.shape == (4, 4) and m[3].weight.shape == (2, 12)


def test_activation_importance_of_a_linear_with_leading_dims():
    rng = np.random.default_rng(2)
    X = rng.standard_normal((5, 3, 4)).astype(np.float32)
    m = nn.Sequential(nn.Linear(4, 6, rng=rng), nn.ReLU(), nn.Linear(6, 2, rng=rng))
    a = np.abs(m[1](m[0](X))).astype(np.float64)  # [N, T, 6]
    want = a.mean(axis=(0, 1))
    np.testing.assert_allclose(P.channel_importance(m, "mean_abs", X)["0"], want, rtol=1e-6)
    # through Flatten the same activations are read interleaved (token-major)
    f = _token_mlp(3)
    a = np.abs(f[1](f[0](X))).astype(np.float64)
    np.testing.assert_allclose(P.channel_importance(f, "mean_abs", X)["0"], a.mean(axis=(0, 1)),
                               rtol=1e-6)


def test_taylor_scores_do_not_depend_on_batch_size():
    # N = 130: batch sizes 65 and 10 divide it, 128 leaves a last batch of 2
    rng = np.random.default_rng(0)
    m = nn.Sequential(nn.Linear(6, 8, rng=rng), nn.ReLU(), nn.Linear(8, 3, rng=rng))
    X = rng.standard_normal((130, 6)).astype(np.float32)
    y = rng.integers(0, 3, 130)
    want = P.channel_importance(m, "taylor", X, y, batch_size=130)["0"]
    for bs in (65, 10, 128):
        got = P.channel_importance(m, "taylor", X, y, batch_size=bs)["0"]
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-9, err_msg=f"batch_size={bs}")


def _tied_model():
    rng = np.random.default_rng(0)
    A = nn.Linear(8, 8, rng=rng)  # used at "2" and "4"
    relu = nn.ReLU()  # a parameter-free module reused: allowed
    return nn.Sequential(nn.Linear(4, 8, rng=rng), relu, A, relu, A, relu, nn.Linear(8, 3, rng=rng))


def test_a_layer_used_twice_is_refused_before_any_change():
    m = _tied_model()
    P.magnitude_prune(m, amount=0.5)
    before = m.state_dict()
    for call in (lambda: P.structured_prune(m, {"0": 0.25}, "l1"),
                 lambda: P.prune_outputs(m, "0", [0, 1, 2]),
                 lambda: P.channel_importance(m, "l1")):
        with pytest.raises(ArgumentError, match=r"model: '2' and '4' are the same Linear.*untie"):
            call()
    assert m[2] is m[4] and P.get_mask(m[4]) is not None
    assert all(np.array_equal(v, before[k]) for k, v in m.state_dict().items())


def test_a_reused_relu_is_allowed():
    rng = np.random.default_rng(0)
    relu = nn.ReLU()
    m = nn.Sequential(nn.Linear(4, 8, rng=rng), relu, nn.Linear(8, 8, rng=rng), relu,
                      nn.Linear(8, 3, rng=rng))
    kept = P.structured_prune(m, 0.25, "l1")
    assert [len(k) for k in kept.values()] == [6, 6] and m[2].weight.shape == (6, 6)


def test_empty_sample_and_empty_keep_are_refused_by_name():
    m = _mlp_with_known_activations()
    X0 = np.zeros((0, 4), np.float32)
    for call in (lambda: P.structured_prune(m, 0.5, "mean_abs", X0),
                 lambda: P.channel_importance(m, "apoz", X0),
                 lambda: P.channel_importance(m, "taylor", X0, np.zeros(0, np.int64))):
        with pytest.raises(ArgumentError, match=r"^X: .*at least one sample"):
            call()
    with pytest.raises(ArgumentError, match=r"^keep: expected at least one"):
        P.prune_outputs(m, "0", [])
    assert m[0].weight.shape == (5, 4)
