"""SVD, rank selection, data-aware SVD, Tucker-2 and CP: the math, checked."""

import warnings

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from refcompress import lowrank as lr
from refcompress.errors import ArgumentError, DTypeError, ShapeError


def _low_rank(rng, m, n, r):
    return rng.standard_normal((m, r)) @ rng.standard_normal((r, n))


@settings(max_examples=40)
@given(m=st.integers(1, 30), n=st.integers(1, 30), seed=st.integers(0, 2**16), data=st.data())
def test_eckart_young_residual_is_root_of_discarded_energy(m, n, seed, data):
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((m, n))
    r = data.draw(st.integers(1, min(m, n)))
    a, b = lr.truncated_svd(w, r)
    s = np.linalg.svd(w, compute_uv=False)
    assert a.shape == (m, r) and b.shape == (r, n)
    assert np.linalg.norm(w - a @ b) == pytest.approx(lr.svd_residual(s, r), rel=1e-9, abs=1e-9)
    assert lr.low_rank_params(m, n, r) == a.size + b.size


def test_folds_give_the_same_product_and_balanced_factors_share_scale():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((20, 12)).astype(np.float32)
    prods = [np.matmul(*lr.truncated_svd(w, 5, fold=f)) for f in ("balanced", "left", "right")]
    np.testing.assert_allclose(prods[0], prods[1], atol=1e-5)
    np.testing.assert_allclose(prods[0], prods[2], atol=1e-5)
    a, b = lr.truncated_svd(w, 5)
    assert a.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(a, axis=0), np.linalg.norm(b, axis=1), rtol=1e-5)


def test_exact_low_rank_matrix_is_recovered():
    rng = np.random.default_rng(1)
    w = _low_rank(rng, 30, 17, 4)
    a, b = lr.truncated_svd(w, 4)
    np.testing.assert_allclose(a @ b, w, atol=1e-10)


def test_rank_by_energy_and_budget():
    s = np.array([3.0, 2.0, 1.0, 0.0])  # energies 9, 4, 1 of 14
    assert lr.rank_by_energy(s, 9 / 14) == 1
    assert lr.rank_by_energy(s, 9 / 14 + 1e-6) == 2
    assert lr.rank_by_energy(s, 1.0) == 3
    assert lr.rank_by_budget(10, 6, 16 * 3 + 5) == 3
    assert lr.rank_by_budget(10, 6, 10**6) == 6
    for bad in (0.0, -0.1, 1.01):
        with pytest.raises(ArgumentError, match="energy"):
            lr.rank_by_energy(s, bad)
    with pytest.raises(ArgumentError, match="budget"):
        lr.rank_by_budget(10, 6, 15)


def test_rank_outside_range_is_refused():
    w = np.ones((4, 6), np.float32)
    for bad in (0, -1, 5):
        with pytest.raises(ArgumentError, match="rank"):
            lr.truncated_svd(w, bad)
    with pytest.raises(DTypeError, match="rank"):
        lr.truncated_svd(w, 2.0)
    with pytest.raises(ArgumentError, match="exactly one"):
        lr.select_rank(w, rank=2, energy=0.5)
    with pytest.raises(ShapeError, match="weight"):
        lr.truncated_svd(np.ones(4, np.float32), 1)


def test_cp_rank_above_the_bound_is_refused_before_any_allocation():
    # any tensor of shape (6, 4, 3, 3) is a sum of 4 * 3 * 3 = 36 rank-one terms (one per
    # column of its mode-0 unfolding), so rank 36 is the largest accepted; a huge rank used
    # to reach a 7 TiB allocation instead of an error naming it
    from refcompress import nn

    assert lr.cp_rank_bound((6, 4, 3, 3)) == 36 and lr.cp_rank_bound((4, 6)) == 4
    rng = np.random.default_rng(5)
    x = rng.standard_normal((6, 4, 3, 3))
    assert lr.cp_als(x, 36, n_iter=2).factors[0].shape == (6, 36)
    for bad in (37, 10**6):
        with pytest.raises(ArgumentError, match=r"rank: expected an integer in \[1, 36\]"):
            lr.cp_als(x, bad)
        with pytest.raises(ArgumentError, match=r"rank: expected an integer in \[1, 36\]"):
            lr.CPConv2d(4, 6, 3, bad)
        with pytest.raises(ArgumentError, match=r"rank: expected an integer in \[1, 36\]"):
            lr.CPConv2d.from_conv(nn.Conv2d(4, 6, 3), bad)
    # the MAC-budget rank never exceeds it either (a 1 -> 1 channel 3x3 conv: bound 3)
    assert lr.cp_rank_for_macs((1, 1, 3, 3), 1.0, (8, 8), (8, 8), (8, 8)) <= lr.cp_rank_bound((1, 1, 3, 3))


def test_evbmf_recovers_rank_and_noise_of_a_noisy_low_rank_matrix():
    rng = np.random.default_rng(2)
    y = _low_rank(rng, 60, 90, 5) + 0.1 * rng.standard_normal((60, 90))
    rank, sigma2, d = lr.evbmf(y)
    assert rank == 5
    assert sigma2 == pytest.approx(0.01, rel=0.15)
    assert np.all(d > 0) and d.size == 5
    assert lr.evbmf(y.T)[0] == 5
    assert lr.rank_by_vbmf(rng.standard_normal((30, 40)) * 1e-3) >= 1


def test_global_allocator_spends_the_budget_where_it_removes_most_error():
    rng = np.random.default_rng(3)
    steep = _low_rank(rng, 40, 40, 3) + 1e-3 * rng.standard_normal((40, 40))
    flat = rng.standard_normal((40, 40))
    budget = 80 * 12
    ranks = lr.allocate_ranks({"steep": steep, "flat": flat}, budget)
    assert sum(80 * r for r in ranks.values()) <= budget
    assert ranks["steep"] == 3  # beyond rank 3 the steep layer has only noise left
    assert ranks["flat"] == 9
    # Marginal optimality: moving one rank from one layer to the other never helps.
    def err(w, r):
        return np.sum(np.linalg.svd(w, compute_uv=False)[r:] ** 2) / np.sum(w ** 2)
    total = err(steep, 3) + err(flat, 9)
    assert total <= err(steep, 4) + err(flat, 8) and total <= err(steep, 2) + err(flat, 10)
    with pytest.raises(ArgumentError, match="budget"):
        lr.allocate_ranks({"a": flat}, 79)


def test_whitened_svd_beats_plain_svd_on_output_error_at_equal_rank():
    rng = np.random.default_rng(4)
    # Inputs with a few dominant directions, as real activations have.
    x = rng.standard_normal((500, 32)) @ np.diag(np.geomspace(10, 0.01, 32)) @ np.linalg.qr(
        rng.standard_normal((32, 32)))[0]
    w = rng.standard_normal((24, 32))
    plain = lr.truncated_svd(w, 6)
    aware = lr.whitened_svd(w, x, 6, damping=0.0)
    assert lr.output_error(w, aware, x) < 0.5 * lr.output_error(w, plain, x)
    # gram accumulated elsewhere gives the same factors
    g = lr.calibration_gram(x)
    a2 = lr.whitened_svd(w, rank=6, gram=g, damping=0.0)
    np.testing.assert_allclose(a2[0] @ a2[1], aware[0] @ aware[1], atol=1e-8)
    # full rank with tiny damping reproduces W
    full = lr.whitened_svd(w, x, 24, damping=0.0)
    np.testing.assert_allclose(full[0] @ full[1], w, atol=1e-6)
    with pytest.raises(ShapeError, match="x"):
        lr.whitened_svd(w, x[:, :5], 3)


def test_tucker2_recovers_a_tensor_of_known_multilinear_rank():
    rng = np.random.default_rng(5)
    core = rng.standard_normal((3, 4, 3, 3))
    w = lr.tucker2_reconstruct(core, rng.standard_normal((10, 3)), rng.standard_normal((7, 4)))
    t = lr.tucker2(w, (3, 4))
    assert t.errors[-1] < 1e-12
    np.testing.assert_allclose(lr.tucker2_reconstruct(t.core, t.u_out, t.u_in), w, atol=1e-10)
    np.testing.assert_allclose(t.u_out.T @ t.u_out, np.eye(3), atol=1e-12)


def test_hooi_error_never_increases():
    rng = np.random.default_rng(6)
    t = lr.tucker2(rng.standard_normal((16, 12, 3, 3)), (5, 4), n_iter=30, tol=0.0)
    assert np.all(np.diff(t.errors) <= 1e-15)
    assert t.errors[-1] < t.errors[0]


def test_cp_als_recovers_a_tensor_of_known_rank():
    rng = np.random.default_rng(7)
    factors = [rng.standard_normal((d, 4)) for d in (9, 6, 3, 3)]
    x = lr.cp_reconstruct(factors)
    cp = lr.cp_als(x, 4)
    assert cp.losses[-1] < 1e-8


@settings(max_examples=15)
@given(seed=st.integers(0, 2**16), rank=st.integers(1, 12), damping=st.sampled_from([0.0, 0.1]),
       line_search=st.booleans())
def test_cp_als_loss_never_increases(seed, rank, damping, line_search):
    rng = np.random.default_rng(seed)
    cp = lr.cp_als(rng.standard_normal((8, 5, 3, 3)), rank, n_iter=40, tol=0.0, damping=damping,
                   line_search=line_search, init="random", seed=seed)
    assert np.all(np.diff(cp.losses) <= 1e-12 * cp.losses[0]), cp.losses


def test_khatri_rao_matches_its_definition():
    rng = np.random.default_rng(8)
    a, b = rng.standard_normal((3, 2)), rng.standard_normal((4, 2))
    kr = lr.khatri_rao([a, b])
    for r in range(2):
        np.testing.assert_allclose(kr[:, r], np.kron(a[:, r], b[:, r]))


def test_mac_counts_and_rank_for_mac_budget():
    shape, hw = (64, 32, 3, 3), (8, 8)
    dense = lr.conv_macs(64, 32, 3, 3, hw)
    assert dense == 64 * 32 * 9 * 64
    r3, r4 = lr.tucker2_ranks_for_macs(shape, 0.5, hw, hw)
    assert lr.tucker2_macs(64, 32, 3, 3, (r3, r4), hw, hw) <= 0.5 * dense
    assert lr.tucker2_macs(64, 32, 3, 3, (r3 + 1, r4 + 1), hw, hw) > 0.5 * dense
    R = lr.cp_rank_for_macs(shape, 0.5, hw, hw, hw)
    assert lr.cp_conv_macs(64, 32, 3, 3, R, hw, hw, hw) <= 0.5 * dense
    assert lr.cp_conv_macs(64, 32, 3, 3, R + 1, hw, hw, hw) > 0.5 * dense


def test_tucker2_refuses_ranks_the_unfoldings_cannot_supply():
    # R3 <= min(T, R4 kh kw), R4 <= min(S, R3 kh kw): a 1x1 conv 2 -> 8 has rank <= 2 on
    # both modes, and (4, 2) used to come back as a (2, 2) core with u_out [8, 2].
    w = np.random.default_rng(0).standard_normal((8, 2, 1, 1))
    with pytest.raises(ArgumentError, match=r"ranks: expected R3 <= R4 kh kw.*largest R3 for R4 = 2 is 2"):
        lr.tucker2(w, (4, 2))
    w = np.random.default_rng(0).standard_normal((2, 8, 1, 1))  # HOSVD's R4 <= T kh kw
    with pytest.raises(ArgumentError, match="ranks"):
        lr.tucker2(w, (2, 4))
    t = lr.tucker2(w, (2, 2))
    assert t.u_out.shape == (2, 2) and t.u_in.shape == (8, 2) and t.core.shape == (2, 2, 1, 1)
    w = np.random.default_rng(1).standard_normal((64, 3, 3, 3))
    with pytest.raises(ArgumentError, match="ranks"):
        lr.tucker2(w, (11, 1))
    t = lr.tucker2(w, (9, 1))
    assert t.u_out.shape == (64, 9) and t.core.shape == (9, 1, 3, 3)


def test_rank_proposers_only_propose_ranks_a_tucker2_can_supply():
    # An RGB stem: 3 -> 64, 3x3.  Before, the MAC proposer gave (11, 1) > R4 kh kw = 9.
    hw = (32, 32)
    r3, r4 = lr.tucker2_ranks_for_macs((64, 3, 3, 3), 0.5, hw, hw)
    assert (r3, r4) == (9, 1)
    assert lr.check_tucker2_ranks((64, 3, 3, 3), (r3, r4)) == (9, 1)
    for shape in [(8, 2, 1, 1), (2, 8, 1, 1), (64, 3, 3, 3), (5, 40, 1, 3), (16, 16, 3, 3)]:
        for frac in (0.2, 0.5, 0.9, 1.0):
            try:
                ranks = lr.tucker2_ranks_for_macs(shape, frac, (6, 6), (6, 6))
            except ArgumentError:
                continue
            lr.check_tucker2_ranks(shape, ranks)
        w = np.random.default_rng(2).standard_normal(shape)
        lr.check_tucker2_ranks(shape, lr.tucker2_ranks_vbmf(w))
    # a full-rank 1x1 kernel 2 -> 8: EVBMF gives (2, 2) at most, never more than the bound
    assert lr.clamp_tucker2_ranks((8, 2, 1, 1), (8, 2)) == (2, 2)
    assert lr.clamp_tucker2_ranks((64, 3, 3, 3), (11, 1)) == (9, 1)


def test_tucker2_ranks_for_macs_validates_weight_shape():
    for bad in [(6, 4, 3), (6, 4, 3, 0), (6, 4, 3, 3, 1), 5, (6, 4, 3, 2.5)]:
        with pytest.raises((ArgumentError, DTypeError), match="weight_shape"):
            lr.tucker2_ranks_for_macs(bad, 0.5, (8, 8), (8, 8))


def test_evbmf_with_an_exactly_zero_singular_value_matches_a_tiny_one():
    # One dead input and one dead output: s_16 = 0 made every -log x_h term +inf, so the
    # free energy was +inf for every sigma^2 and the minimiser returned an arbitrary point.
    rng = np.random.default_rng(0)
    k = 15
    w = np.zeros((16, 16))
    w[:k, :k] = 0.3 * rng.standard_normal((k, k)) + rng.standard_normal((k, 2)) @ rng.standard_normal((2, k))
    w2 = w.copy()
    w2[k, k] = 1e-12
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no divide-by-zero RuntimeWarning
        r, s2, _ = lr.evbmf(w)
        r2, s22, _ = lr.evbmf(w2)
    assert r == r2 == 2
    assert s2 == pytest.approx(s22, rel=1e-6)
    assert lr.rank_by_vbmf(w) == 2
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert lr.evbmf(np.diag([5.0, 3.0, 0.0, 0.0]))[:2] == pytest.approx(lr.evbmf(np.diag([5.0, 3.0, 1e-9, 1e-9]))[:2])


def test_whitened_svd_with_an_indefinite_float32_gram_names_gram_and_damping():
    # rank 3 of 16, summed in float32: eigenvalues ~ -1e-7 mean(diag C), so the Cholesky
    # factorisation failed with numpy's LinAlgError when damping was 0
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 16)).astype(np.float32)
    gram = x.T @ x
    w = rng.standard_normal((8, 16)).astype(np.float32)
    with pytest.raises(ArgumentError, match=r"gram, damping: .* not positive definite.*larger damping"):
        lr.whitened_svd(w, gram=gram, rank=2, damping=0.0)
    a, b = lr.whitened_svd(w, gram=gram, rank=2, damping=1e-4)
    assert a.shape == (8, 2) and b.shape == (2, 16)


def test_energy_one_keeps_the_numerical_rank():
    # the tail's share 1e-14 is below the 1e-12 rounding allowance of e < 1
    assert lr.rank_by_energy([1.0, 1e-7], 1.0) == 2
    assert lr.rank_by_energy([1.0, 1e-7, 0.0, 0.0], 1.0) == 2
    # below s_1 * k * eps: rounding noise, not rank
    assert lr.rank_by_energy([1.0, 1e-200], 1.0) == 1
    assert lr.rank_by_energy(np.array([1.0, 1e-7], np.float32), 1.0) == 1  # float32: floor 2.4e-7
    assert lr.rank_by_energy([1.0, 1e-7], 1.0, eps=2.0 ** -23) == 1
    # an exactly rank-2 float32 weight keeps rank 2, not its SVD's ~1e-7 noise (48)
    rng = np.random.default_rng(0)
    w = (rng.standard_normal((64, 2)) @ rng.standard_normal((2, 48))).astype(np.float32)
    assert lr.select_rank(w, energy=1.0) == 2
    assert lr.rank_by_energy([0.0, 0.0], 1.0) == 1
    assert lr.rank_by_energy([1.0, 1e-7], 1.0 - 1e-9) == 1  # e < 1 unchanged
    w = np.diag([3.0, 2.0, 1e-8, 0.0])
    assert lr.select_rank(w, energy=1.0) == 3


def test_tucker2_hosvd_alone_takes_ranks_hooi_cannot():
    """(20, 2) on a 32x8x3x3 kernel: R3 > R4 kh kw bounds HOOI's U_out, not HOSVD's."""
    w = np.random.default_rng(0).standard_normal((32, 8, 3, 3))
    t = lr.tucker2(w, (20, 2), n_iter=0)
    assert t.core.shape == (20, 2, 3, 3) and t.u_out.shape == (32, 20) and t.u_in.shape == (8, 2)
    with pytest.raises(ArgumentError, match="R3 <= R4 kh kw"):
        lr.tucker2(w, (20, 2), n_iter=1)
    with pytest.raises(ArgumentError, match="R4 <= T kh kw"):
        lr.tucker2(np.ones((1, 16, 3, 3)), (1, 10), n_iter=0)
