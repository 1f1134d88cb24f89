"""N:M semi-structured sparsity: the mask keeps the n largest of every m, ties go to the
lower position, conv groups run along input channels, the pattern survives fine-tuning,
and bad n / m are refused."""

import numpy as np
import pytest
from hypothesis import given, strategies as st

from refcompress import nn, prune as P
from refcompress.errors import ArgumentError, DTypeError, ShapeError


@given(st.integers(1, 8), st.integers(1, 4), st.integers(1, 5), st.integers(0, 2**31))
def test_nm_mask_keeps_the_n_largest_of_every_group(m, groups, rows, seed):
    n = np.random.default_rng(seed).integers(1, m + 1)
    w = np.random.default_rng(seed).integers(-3, 4, (rows, groups * m)).astype(np.float32)
    mask = P.nm_mask(w, n, m)
    g = mask.reshape(rows, groups, m)
    assert np.all(g.sum(axis=-1) == n)
    a = np.abs(w).reshape(rows, groups, m)
    kept_min = np.where(g, a, np.inf).min(axis=-1)
    dropped_max = np.where(~g, a, -np.inf).max(axis=-1)
    assert np.all(dropped_max <= kept_min)
    # ties: a kept entry never comes after a dropped one of the same magnitude in its group
    for r in range(rows):
        for j in range(groups):
            for v in np.unique(a[r, j]):
                idx = np.flatnonzero(a[r, j] == v)
                assert np.all(np.diff(g[r, j, idx].astype(int)) <= 0)


def test_two_four_example_and_conv_groups_along_input_channels():
    w = np.array([[0.1, -0.9, 0.5, 0.2, 1, 1, 1, 1]], np.float32)
    np.testing.assert_array_equal(P.nm_mask(w, 2, 4), [[0, 1, 1, 0, 1, 1, 0, 0]])
    conv = np.random.default_rng(0).standard_normal((3, 8, 2, 2)).astype(np.float32)
    mask = P.nm_mask(conv, 2, 4)
    # for each (out, kh, kw) position, every group of 4 input channels keeps 2
    assert np.all(mask.reshape(3, 2, 4, 2, 2).sum(axis=2) == 2)
    assert P.is_nm_sparse(conv * mask, 2, 4) and not P.is_nm_sparse(conv, 2, 4)


def test_bad_n_m_are_refused():
    w = np.ones((2, 6), np.float32)
    with pytest.raises(ArgumentError, match="n"):
        P.nm_mask(w, 3, 2)
    with pytest.raises(ShapeError, match="divisible by m = 4"):
        P.nm_mask(w, 2, 4)
    with pytest.raises(ArgumentError, match="m"):
        P.nm_mask(w, 1, 0)
    m = nn.Sequential(nn.Linear(6, 4), nn.ReLU(), nn.Linear(4, 2))
    with pytest.raises(ShapeError, match="'0' has 6 inputs"):
        P.nm_prune(m, 2, 4)


def test_nm_pattern_is_kept_through_fine_tuning_and_converts():
    rng = np.random.default_rng(0)
    m = nn.Sequential(nn.Linear(8, 12, rng=rng), nn.ReLU(), nn.Linear(12, 4, rng=rng))
    P.nm_prune(m, 2, 4)
    X = rng.standard_normal((64, 8)).astype(np.float32)
    y = rng.integers(0, 4, 64)
    before = m[0].weight.data.copy()
    nn.fit(m, X, y, optimizer=nn.AdamW(m.parameters(), lr=1e-2), epochs=3, batch_size=16, progress=False)
    assert not np.allclose(m[0].weight.data, before)
    for i in (0, 2):
        assert P.is_nm_sparse(m[i].weight.data, 2, 4)
    dense_out = nn.predict(m, X)
    P.to_nm(m, 2, 4)
    assert isinstance(m[0], P.NMLinear) and isinstance(m[2], P.NMLinear)
    np.testing.assert_allclose(nn.predict(m, X), dense_out, rtol=1e-5, atol=1e-5)
    assert P.masked_layers(m) == []


def test_to_nm_refuses_a_layer_off_the_pattern():
    m = nn.Sequential(nn.Linear(8, 3), nn.ReLU(), nn.Linear(3, 2))
    with pytest.raises(ArgumentError, match="'0' is not 2:4 sparse"):
        P.to_nm(m, 2, 4, layers=["0"])
    assert isinstance(m[0], nn.Linear)  # nothing was half converted


# ---- channel permutation (Pool & Yu 2021) ---------------------------------------------------


@given(st.sampled_from([(1, 2), (2, 4), (1, 4), (3, 8)]), st.integers(1, 9), st.integers(1, 7),
       st.integers(0, 3), st.integers(0, 2**31))
def test_nm_permutation_is_a_permutation_that_never_keeps_less(nm, groups, rows, sweeps, seed):
    n, m = nm
    rng = np.random.default_rng(seed)
    s = np.abs(rng.standard_normal((rows, groups * m))) * rng.random(groups * m) ** 3
    start = P.nm_permutation(s, n, m, sweeps=0)
    perm = P.nm_permutation(s, n, m, sweeps=sweeps, seed=seed)
    assert perm.dtype == np.int64 and np.array_equal(np.sort(perm), np.arange(groups * m))
    # the swaps only ever raise the retained importance of their start, which is the better of
    # the round-robin deal and no permutation at all
    assert P.nm_retained(s, n, m, perm) >= P.nm_retained(s, n, m, start) - 1e-9 * s.sum()
    assert P.nm_retained(s, n, m, perm) >= P.nm_retained(s, n, m) - 1e-9 * s.sum()
    # nm_retained is the sum of what nm_mask keeps of the permuted scores
    kept = P.nm_mask(s[:, perm], n, m)
    assert P.nm_retained(s, n, m, perm) == pytest.approx(s[:, perm][kept].sum())


def test_nm_permutation_separates_important_channels():
    # channels 0, 1 and 2 share the first 2:4 group, so row 1 (which needs all three) loses one
    s = np.full((3, 8), 0.01)
    s[:, 0], s[:, 1] = 5.0, 4.0
    s[1, 2] = 3.0
    assert P.nm_retained(s, 2, 4) == pytest.approx(3 * 9.02)  # row 1 loses channel 2's 3.0
    for sweeps in (0, 2):
        perm = P.nm_permutation(s, 2, 4, sweeps=sweeps)
        assert not any({0, 1, 2} <= set(perm[g:g + 4]) for g in (0, 4))
        # the optimum: rows 0 and 2 keep 5 and 4 (+ 0.01 twice); row 1 also keeps its 3.0
        assert P.nm_retained(s, 2, 4, perm) == pytest.approx(9.02 + 12.01 + 9.02)


def test_nm_permutation_never_keeps_less_than_no_permutation():
    # a case where the round-robin deal keeps less than the identity (13.1 < 13.3)
    s = np.array([[1.9, 0, 1.2, 1.1, 1.3, 0.7, 1.4, 0.3], [0.4, 1.5, 0.5, 1.3, 1.7, 0.2, 0, 0.7],
                  [1, 0.5, 0.4, 0.4, 0.1, 0.4, 0.4, 0.5]])
    for sweeps in (0, 1, 3):
        assert P.nm_retained(s, 1, 2, P.nm_permutation(s, 1, 2, sweeps=sweeps)) >= P.nm_retained(s, 1, 2)


def test_nm_permutation_bad_input():
    with pytest.raises(ShapeError, match="scores"):
        P.nm_permutation(np.ones((2, 6)), 2, 4)
    with pytest.raises(ArgumentError, match="scores"):
        P.nm_permutation(-np.ones((2, 8)), 2, 4)
    with pytest.raises(ArgumentError, match="sweeps"):
        P.nm_permutation(np.ones((2, 8)), 2, 4, sweeps=-1)
    with pytest.raises(DTypeError, match="seed"):
        P.nm_permutation(np.ones((2, 8)), 2, 4, seed="x")
    with pytest.raises(ArgumentError, match="perm"):
        P.nm_retained(np.ones((2, 8)), 2, 4, perm=np.array([0, 0, 1, 2, 3, 4, 5, 6]))
    with pytest.raises(ArgumentError, match="perm"):
        P.nm_retained(np.ones((2, 8)), 2, 4, perm=np.arange(8.0))
