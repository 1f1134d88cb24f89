"""Unstructured magnitude pruning: mask computation, tie rule, global vs per layer, and
masks enforced through training (masked gradients and weights via the Parameter hooks)."""

import copy
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, strategies as st

from refcompress import nn, prune as P
from refcompress.errors import ArgumentError, DTypeError, ShapeError


def mlp(seed=0):
    rng = np.random.default_rng(seed)
    return nn.Sequential(nn.Linear(6, 8, rng=rng), nn.ReLU(), nn.Linear(8, 3, rng=rng))


@given(st.integers(1, 60), st.floats(0, 1), st.integers(0, 2**31))
def test_mask_by_amount_prunes_exactly_the_k_smallest(size, amount, seed):
    s = np.random.default_rng(seed).integers(0, 5, size).astype(np.float32)  # many ties
    mask = P.mask_by_amount(s, amount)
    k = round(Fraction(repr(amount)) * size)  # half-even of the exact decimal
    assert mask.dtype == bool and mask.shape == s.shape
    assert np.count_nonzero(~mask) == k
    if 0 < k < size:
        assert s[~mask].max() <= s[mask].min()
    # the tie rule: among equal scores, the lower index is pruned first
    for v in np.unique(s):
        idx = np.flatnonzero(s == v)
        pruned = ~mask[idx]
        assert np.all(np.diff(pruned.astype(int)) <= 0), "a pruned tie after a kept one"


def test_tie_rule_is_row_major_and_documented_example():
    s = np.ones((2, 3), np.float32)
    mask = P.mask_by_amount(s, 0.5)
    np.testing.assert_array_equal(mask, [[False, False, False], [True, True, True]])


def test_threshold_and_han_threshold():
    w = np.array([[-0.3, 0.1, 0.0], [0.2, -0.2, 0.5]], np.float32)
    np.testing.assert_array_equal(P.mask_by_threshold(np.abs(w), 0.2),
                                  [[True, False, False], [False, False, True]])
    alive = w[w != 0].astype(np.float64)
    assert P.han_threshold(w, 1.5) == pytest.approx(1.5 * np.std(alive))
    assert P.han_threshold(np.zeros((2, 2), np.float32), 1.0) == 0.0


def test_layer_masks_amount_threshold_quality_and_dict():
    m = mlp()
    masks = P.layer_masks(m, amount=0.5)
    assert set(masks) == {"0", "2"}
    for name, mask in masks.items():
        assert np.count_nonzero(~mask) == int(np.rint(0.5 * mask.size))
    masks = P.layer_masks(m, amount={"0": 0.25})
    assert np.count_nonzero(~masks["0"]) == 12 and masks["2"].all()
    masks = P.layer_masks(m, threshold=0.2)
    np.testing.assert_array_equal(masks["0"], np.abs(m[0].weight.data) > 0.2)
    masks = P.layer_masks(m, quality=1.0)
    t = np.std(m[2].weight.data.astype(np.float64))
    np.testing.assert_array_equal(masks["2"], np.abs(m[2].weight.data) > t)


def test_global_masks_rank_across_layers():
    m = mlp()
    w2 = m[2].weight.data
    m[2].weight.data = (np.sign(w2) * (1 + np.abs(w2))).astype(np.float32)  # all |w| > 1 >= layer 0
    masks = P.global_masks(m, 0.5)
    total = sum(x.size for x in masks.values())
    assert sum(np.count_nonzero(~x) for x in masks.values()) == int(np.rint(0.5 * total))
    assert masks["2"].all() and not masks["0"].all()
    flat = np.concatenate([np.abs(m[0].weight.data).ravel(), np.abs(m[2].weight.data).ravel()])
    keep = np.concatenate([masks["0"].ravel(), masks["2"].ravel()])
    assert flat[~keep].max() <= flat[keep].min()
    # normalised by each layer's std, both layers lose weights
    masks = P.global_masks(m, 0.5, normalize="std")
    assert not masks["2"].all()


@pytest.mark.parametrize("amount", [-0.1, 1.5, float("nan")])
def test_amount_outside_unit_interval_is_refused(amount):
    with pytest.raises(ArgumentError, match="amount"):
        P.layer_masks(mlp(), amount=amount)
    with pytest.raises(ArgumentError, match="amount"):
        P.global_masks(mlp(), amount)


def test_bad_inputs_name_the_argument():
    m = mlp()
    with pytest.raises(ArgumentError, match="exactly one"):
        P.layer_masks(m, amount=0.5, threshold=0.1)
    with pytest.raises(ArgumentError, match="threshold"):
        P.layer_masks(m, threshold=-1.0)
    with pytest.raises(ArgumentError, match="layers"):
        P.layer_masks(m, amount=0.5, layers=["1"])  # a ReLU
    with pytest.raises(ArgumentError, match="amount"):
        P.layer_masks(m, amount={"9": 0.5})
    with pytest.raises(ShapeError, match="mask"):
        P.apply_mask(m[0], np.ones((2, 2), bool))
    with pytest.raises(DTypeError, match="mask"):
        P.apply_mask(m[0], np.ones((8, 6), np.float32))
    with pytest.raises(ArgumentError, match="name"):
        P.apply_mask(m[1], np.ones(1, bool))


def _train_a_bit(model, opt, steps=5, seed=0):
    rng = np.random.default_rng(seed)
    for _ in range(steps):
        x = rng.standard_normal((16, 6)).astype(np.float32)
        y = rng.integers(0, 3, 16)
        opt.zero_grad()
        out = model(x)
        _, g = nn.cross_entropy(out, y)
        model.backward(g)
        opt.step()


@pytest.mark.parametrize("make_opt", [
    lambda p: nn.SGD(p, lr=0.1, momentum=0.9, weight_decay=1e-2),
    lambda p: nn.AdamW(p, lr=1e-2, weight_decay=1e-1),
])
def test_masks_are_enforced_through_training(make_opt):
    m = mlp()
    opt = make_opt(list(m.parameters()))
    _train_a_bit(m, opt, 3)  # build momentum / Adam state before pruning
    masks = P.magnitude_prune(m, amount=0.6)
    before = {k: m.get_submodule(k).weight.data.copy() for k in masks}
    _train_a_bit(m, opt, 5, seed=1)
    for k, mask in masks.items():
        w = m.get_submodule(k).weight.data
        assert np.all(w[~mask] == 0), "a pruned weight came back"
        assert not np.allclose(w[mask], before[k][mask]), "the survivors were not trained"
        g = m.get_submodule(k).weight.grad
        assert np.all(g[~mask] == 0), "a pruned weight received a gradient"


def test_replacing_and_removing_masks():
    m = mlp()
    P.magnitude_prune(m, amount=0.3)
    P.magnitude_prune(m, amount=0.7)  # a second mask replaces the first, hooks once
    assert len(m[0].weight.grad_hooks) == 1 and len(m[0].weight.post_step_hooks) == 1
    assert P.model_sparsity(m) == pytest.approx(0.7, abs=0.01)
    assert [n for n, _ in P.masked_layers(m)] == ["0", "2"]
    P.remove_masks(m)
    assert P.masked_layers(m) == [] and m[0].weight.grad_hooks == []
    assert P.model_sparsity(m) == pytest.approx(0.7, abs=0.01)  # the zeros stay


def test_deepcopy_of_a_masked_model_has_its_own_masks():
    m = mlp()
    P.magnitude_prune(m, amount=0.5)
    c = copy.deepcopy(m)
    P.apply_mask(c[0], np.ones((8, 6), bool))  # changing the copy's mask ...
    m[0].weight.grad = np.ones((8, 6), np.float32)
    g = m[0].weight.hooked_grad()
    assert np.count_nonzero(g == 0) == 24  # ... leaves the original's hook on its own mask


def test_emptying_a_layer_warns():
    m = mlp()
    with pytest.warns(RuntimeWarning, match="loses all of its weights"):
        P.magnitude_prune(m, amount={"2": 1.0})
    assert np.all(m[2].weight.data == 0)


def test_loading_a_dense_state_dict_keeps_masked_weights_zero():
    m = mlp()
    dense = m.state_dict()
    P.magnitude_prune(m, amount=0.5)
    mask = P.get_mask(m[0]).copy()
    m.load_state_dict(dense)  # a load is an update: the post-step hook re-applies the mask
    assert np.all(m[0].weight.data[~mask] == 0)
    np.testing.assert_array_equal(m[0].weight.data[mask], dense["0.weight"][mask])
    np.testing.assert_array_equal(m[0].bias.data, dense["0.bias"])  # unmasked: loaded as is
    assert np.array_equal(P.get_mask(m[0]), mask)


@pytest.mark.parametrize("amount, size, k", [
    (0.35, 90, 32), (0.55, 110, 60), (0.07, 150, 10), (0.7, 45, 32),  # x.5: half to even
    (0.5, 10, 5), (0.25, 6, 2), (0.75, 6, 4), (0.3, 10, 3)])
def test_count_pruned_is_half_even_of_the_typed_decimal(amount, size, k):
    # amount * size in floats is 31.499999999999996 for 0.35 * 90 (rounded to 31 before)
    assert np.count_nonzero(~P.mask_by_amount(np.arange(size, dtype=np.float64), amount)) == k
    assert len(P.select_outputs(np.arange(size, dtype=np.float64), amount)) == size - k
