"""Soft targets (Hinton et al. 2015): exact gradients, the T^2 factor, stability, errors.

Gradient tolerance: see refcompress/testing/gradcheck.py (element-wise 1e-6 + 1e-5 |analytic|).
"""

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from refcompress.distill import distillation_loss, soft_target_loss
from refcompress.errors import ArgumentError, DTypeError, ShapeError
from refcompress.nn.functional import softmax

from refcompress.testing.gradcheck import assert_grad, numeric_grad

SEEDS = st.integers(0, 2**31)
TEMPS = st.sampled_from([0.5, 1.0, 2.0, 4.0, 10.0])
FEW = settings(max_examples=25)


def _logits(seed, n, c, scale=3.0):
    rng = np.random.default_rng(seed)
    return rng.normal(0, scale, (n, c)), rng.normal(0, scale, (n, c))


@FEW
@given(seed=SEEDS, n=st.integers(1, 4), c=st.integers(2, 6), T=TEMPS)
def test_soft_target_gradient_matches_finite_differences(seed, n, c, T):
    s, t = _logits(seed, n, c)
    _, g = soft_target_loss(s, t, T)
    num = numeric_grad(lambda: soft_target_loss(s, t, T)[0], s)
    assert_grad(num, g, f"soft target grad, T={T}")


@FEW
@given(seed=SEEDS, n=st.integers(1, 4), c=st.integers(2, 6), T=TEMPS,
       alpha=st.sampled_from([0.0, 0.1, 0.5, 0.9, 1.0]))
def test_mixed_loss_gradient_matches_finite_differences(seed, n, c, T, alpha):
    s, t = _logits(seed, n, c)
    y = np.random.default_rng(seed + 1).integers(0, c, n)
    _, g = distillation_loss(s, t, y, temperature=T, alpha=alpha)
    num = numeric_grad(lambda: distillation_loss(s, t, y, temperature=T, alpha=alpha)[0], s)
    assert_grad(num, g, f"mixed grad alpha={alpha} T={T}")


def test_value_is_T_squared_times_the_definition():
    s, t = _logits(3, 5, 4)
    T = 3.0
    pt, ps = softmax(t / T, axis=1), softmax(s / T, axis=1)
    kl = np.mean(np.sum(pt * (np.log(pt) - np.log(ps)), axis=1))
    value, grad = soft_target_loss(s, t, T)
    assert value == pytest.approx(T * T * kl, rel=1e-12)
    np.testing.assert_allclose(grad, T * (ps - pt) / 5, rtol=1e-12, atol=1e-15)


def test_T_squared_keeps_the_gradient_scale_at_high_temperature():
    # Hinton's argument: without T^2 the soft gradient falls like 1/T^2; with it, it
    # approaches (z_s - z_t) / (C N) for zero-mean logits.
    rng = np.random.default_rng(0)
    s = rng.normal(size=(3, 5)); s -= s.mean(axis=1, keepdims=True)
    t = rng.normal(size=(3, 5)); t -= t.mean(axis=1, keepdims=True)
    limit = (s - t) / (5 * 3)
    _, g = soft_target_loss(s, t, 1000.0)
    np.testing.assert_allclose(g, limit, rtol=1e-2, atol=1e-8)


def test_mix_is_the_convex_combination():
    s, t = _logits(7, 6, 3)
    y = np.array([0, 1, 2, 0, 1, 2])
    v0, g0 = distillation_loss(s, t, y, temperature=2.0, alpha=0.0)
    v1, g1 = distillation_loss(s, t, y, temperature=2.0, alpha=1.0)
    v, g = distillation_loss(s, t, y, temperature=2.0, alpha=0.3)
    assert v == pytest.approx(0.3 * v1 + 0.7 * v0, rel=1e-12)
    np.testing.assert_allclose(g, 0.3 * g1 + 0.7 * g0, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("scale,T", [(1e4, 1.0), (1e4, 1e3), (30.0, 1e6), (1e30, 5.0)])
def test_stable_for_large_logits_and_large_T(dtype, scale, T):
    rng = np.random.default_rng(1)
    s = (rng.normal(size=(4, 10)) * scale).astype(dtype)
    t = (rng.normal(size=(4, 10)) * scale).astype(dtype)
    v, g = soft_target_loss(s, t, T)
    assert np.isfinite(v) and v >= 0
    assert g.dtype == dtype and np.all(np.isfinite(g))
    # softmax is shift invariant per row: shifting both by a constant changes nothing
    v2, _ = soft_target_loss(s - s.max(), t - t.max(), T)
    assert v2 == pytest.approx(v, rel=1e-3, abs=1e-6)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_high_temperature_limit_is_half_the_logit_variance(dtype):
    # Second order in 1/T: T^2 KL -> 1/2 [mean_k d^2 - (mean_k d)^2] with d = z_t - z_s
    # (Hinton et al. 2015, "matching logits"); float32 inputs must reach it too.
    rng = np.random.default_rng(5)
    s = rng.normal(0, 30, (4, 10)).astype(dtype)
    t = rng.normal(0, 30, (4, 10)).astype(dtype)
    d = (t.astype(np.float64) - s.astype(np.float64))
    limit = 0.5 * np.mean(np.mean(d**2, axis=1) - np.mean(d, axis=1) ** 2)
    v, _ = soft_target_loss(s, t, 1e6)
    assert v == pytest.approx(limit, rel=1e-3)


def test_zero_when_student_equals_teacher():
    s, _ = _logits(2, 3, 5)
    v, g = soft_target_loss(s, s.copy(), 4.0)
    assert v == pytest.approx(0.0, abs=1e-12)
    np.testing.assert_allclose(g, 0.0, atol=1e-15)


@pytest.mark.parametrize("T", [0.0, -1.0, float("inf"), float("nan")])
def test_bad_temperature(T):
    s, t = _logits(0, 2, 3)
    with pytest.raises(ArgumentError, match="temperature"):
        soft_target_loss(s, t, T)


@pytest.mark.parametrize("alpha", [-0.1, 1.5])
def test_alpha_outside_unit_interval(alpha):
    s, t = _logits(0, 2, 3)
    with pytest.raises(ArgumentError, match="alpha"):
        distillation_loss(s, t, np.array([0, 1]), alpha=alpha)


def test_class_count_mismatch_names_teacher_logits():
    s = np.zeros((2, 10))
    t = np.zeros((2, 5))
    with pytest.raises(ShapeError, match="teacher_logits.*10 classes.*got 5"):
        soft_target_loss(s, t, 2.0)


def test_dtype_mismatch_is_refused():
    with pytest.raises(DTypeError, match="teacher_logits"):
        soft_target_loss(np.zeros((2, 3)), np.zeros((2, 3), np.float32), 2.0)


def test_unlabeled_needs_alpha_zero():
    s, t = _logits(0, 2, 3)
    with pytest.raises(ArgumentError, match="alpha"):
        distillation_loss(s, t, None, alpha=0.5)
    v, _ = distillation_loss(s, t, None, alpha=0.0)
    assert v == pytest.approx(soft_target_loss(s, t, 4.0)[0])
