"""Attention transfer (Zagoruyko & Komodakis 2017) and attention-probability KL (MiniLM).

Gradient tolerance: see refcompress/testing/gradcheck.py (element-wise 1e-6 + 1e-5 |analytic|).
"""

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from refcompress.distill import (attention_probability_loss, attention_transfer_loss,
                                 spatial_attention)
from refcompress.errors import ArgumentError, DTypeError, ShapeError
from refcompress.nn.functional import softmax

from refcompress.testing.gradcheck import assert_grad, numeric_grad

SEEDS = st.integers(0, 2**31)
FEW = settings(max_examples=20)


def _maps(seed, n, cs, ct, hs, ws, ht=None, wt=None):
    rng = np.random.default_rng(seed)
    ht, wt = ht or hs, wt or ws
    return rng.normal(size=(n, cs, hs, ws)), rng.normal(size=(n, ct, ht, wt))


def test_spatial_attention_is_the_normalised_channel_sum():
    A = np.random.default_rng(0).normal(size=(2, 3, 4, 5))
    q = spatial_attention(A, p=2)
    Q = (A**2).sum(axis=1).reshape(2, -1)
    np.testing.assert_allclose(q, Q / np.linalg.norm(Q, axis=1, keepdims=True), rtol=1e-13)
    np.testing.assert_allclose(np.linalg.norm(q, axis=1), 1.0, rtol=1e-13)
    # sum over channels and the authors' mean over channels give the same normalised map
    np.testing.assert_allclose(spatial_attention(np.concatenate([A, A], axis=1)), q, rtol=1e-13)


def test_all_zero_map_stays_finite():
    q = spatial_attention(np.zeros((1, 2, 3, 3)))
    assert np.all(q == 0)
    v, g = attention_transfer_loss(np.zeros((1, 2, 3, 3)), np.ones((1, 4, 3, 3)))
    assert np.isfinite(v) and np.all(np.isfinite(g))


@FEW
@given(seed=SEEDS, n=st.integers(1, 3), cs=st.integers(1, 3), ct=st.integers(1, 4),
       h=st.integers(1, 4), w=st.integers(2, 4), p=st.sampled_from([2.0, 3.0, 1.5]),
       squared=st.booleans(), beta=st.sampled_from([1.0, 0.3, 250.0]))
def test_attention_transfer_gradient(seed, n, cs, ct, h, w, p, squared, beta):
    S, T = _maps(seed, n, cs, ct, h, w)
    _, g = attention_transfer_loss(S, T, p=p, beta=beta, squared=squared)
    num = numeric_grad(lambda: attention_transfer_loss(S, T, p=p, beta=beta, squared=squared)[0], S)
    assert_grad(num, g, f"AT grad p={p} squared={squared}")


@FEW
@given(seed=SEEDS, n=st.integers(1, 2), f=st.sampled_from([(2, 2), (2, 1), (1, 2)]),
       student_larger=st.booleans(), squared=st.booleans())
def test_attention_transfer_gradient_with_avgpool_resize(seed, n, f, student_larger, squared):
    small = (2, 3)
    big = (small[0] * f[0], small[1] * f[1])
    hs, ht = (big, small) if student_larger else (small, big)
    S, T = _maps(seed, n, 2, 3, *hs, *ht)
    kw = dict(resize="avgpool", squared=squared, beta=2.0)
    _, g = attention_transfer_loss(S, T, **kw)
    num = numeric_grad(lambda: attention_transfer_loss(S, T, **kw)[0], S)
    assert_grad(num, g, "AT grad through avgpool resize")


def test_attention_transfer_value_matches_the_equation():
    S, T = _maps(4, 3, 2, 5, 3, 3)
    qs, qt = spatial_attention(S), spatial_attention(T)
    norms = np.linalg.norm(qs - qt, axis=1)
    v, _ = attention_transfer_loss(S, T, beta=0.8)
    assert v == pytest.approx(0.4 * norms.mean(), rel=1e-12)
    v2, _ = attention_transfer_loss(S, T, beta=0.8, squared=True)
    assert v2 == pytest.approx(0.4 * (norms**2).mean(), rel=1e-12)


def test_identical_attention_gives_zero_loss_and_zero_grad():
    S, _ = _maps(1, 2, 3, 3, 4, 4)
    v, g = attention_transfer_loss(S, 2.0 * S, beta=5.0)   # scaling does not change q
    assert v == pytest.approx(0.0, abs=1e-12)
    np.testing.assert_allclose(g, 0.0, atol=1e-9)


def test_float32_features_give_float32_grad():
    S, T = _maps(2, 2, 3, 4, 4, 4)
    _, g = attention_transfer_loss(S.astype(np.float32), T.astype(np.float32))
    assert g.dtype == np.float32 and g.shape == S.shape


def test_spatial_mismatch_without_resize_is_an_error():
    S, T = _maps(0, 2, 3, 3, 4, 4, 2, 2)
    with pytest.raises(ShapeError, match="student_features.*resize='avgpool'"):
        attention_transfer_loss(S, T)


def test_resize_needs_integer_ratio():
    S, T = _maps(0, 2, 3, 3, 5, 5, 2, 2)
    with pytest.raises(ShapeError, match="divide evenly"):
        attention_transfer_loss(S, T, resize="avgpool")


def test_attention_transfer_argument_errors():
    S, T = _maps(0, 2, 3, 3, 4, 4)
    with pytest.raises(ArgumentError, match="beta"):
        attention_transfer_loss(S, T, beta=-1.0)
    with pytest.raises(ArgumentError, match="p"):
        attention_transfer_loss(S, T, p=0.5)
    with pytest.raises(ArgumentError, match="resize"):
        attention_transfer_loss(S, T, resize="bilinear")
    with pytest.raises(ShapeError, match="teacher_features.*batch"):
        attention_transfer_loss(S, T[:1])
    with pytest.raises(ShapeError, match="student_features"):
        attention_transfer_loss(S[:, 0], T)
    with pytest.raises(DTypeError, match="teacher_features"):
        attention_transfer_loss(S, T.astype(np.float32))


# -- attention probabilities (MiniLM) ---------------------------------------------------

def _probs(seed, b, h, q, k, scale=2.0):
    rng = np.random.default_rng(seed)
    return (softmax(rng.normal(0, scale, (b, h, q, k)), axis=-1),
            softmax(rng.normal(0, scale, (b, h, q, k)), axis=-1))


@FEW
@given(seed=SEEDS, b=st.integers(1, 2), h=st.integers(1, 3), q=st.integers(1, 3), k=st.integers(2, 4))
def test_attention_probability_gradient(seed, b, h, q, k):
    # Scores of scale 1 keep P_s >~ 1e-3: the loss's third derivative is 2 P_t / P_s^3, so
    # the central difference's truncation error h^2/6 * 2 P_t/P_s^3 stays far below the
    # tolerance (scale-2 scores reach P_s ~ 1e-4, where it does not).
    Ps, Pt = _probs(seed, b, h, q, k, scale=1.0)
    _, g = attention_probability_loss(Ps, Pt)
    # perturb P_s entries as free variables (rows need not stay normalised for the derivative)
    def f():
        M = b * h * q
        return float(np.sum(Pt * (np.log(Pt) - np.log(Ps))) / M)
    assert attention_probability_loss(Ps, Pt)[0] == pytest.approx(f(), rel=1e-12)
    num = numeric_grad(f, Ps)
    assert_grad(num, g, "attention KL grad")


@FEW
@given(seed=SEEDS, b=st.integers(1, 2), h=st.integers(1, 2), q=st.integers(1, 3), k=st.integers(2, 4))
def test_attention_probability_chain_to_scores(seed, b, h, q, k):
    # Through the softmax the gradient w.r.t. student scores is (P_s - P_t) / (B H Q).
    rng = np.random.default_rng(seed)
    scores = rng.normal(size=(b, h, q, k))
    _, Pt = _probs(seed + 1, b, h, q, k)
    Ps = softmax(scores, axis=-1)
    _, g = attention_probability_loss(Ps, Pt)
    g_scores = Ps * (g - np.sum(Ps * g, axis=-1, keepdims=True))
    np.testing.assert_allclose(g_scores, (Ps - Pt) / (b * h * q), rtol=1e-9, atol=1e-12)
    num = numeric_grad(lambda: attention_probability_loss(softmax(scores, axis=-1), Pt)[0], scores)
    assert_grad(num, g_scores, "attention KL grad w.r.t. scores")


def test_attention_probability_zero_teacher_entries_count_zero():
    Pt = np.array([[[[1.0, 0.0, 0.0]]]])
    Ps = np.array([[[[0.5, 0.25, 0.25]]]])
    v, g = attention_probability_loss(Ps, Pt)
    assert v == pytest.approx(np.log(2.0))
    np.testing.assert_allclose(g, [[[[-2.0, 0.0, 0.0]]]])


def test_attention_probability_errors():
    Ps, Pt = _probs(0, 1, 2, 2, 3)
    with pytest.raises(ShapeError, match="teacher_probs.*heads"):
        attention_probability_loss(Ps, Pt[:, :1])
    with pytest.raises(ArgumentError, match="student_probs.*sum to 1"):
        attention_probability_loss(Ps * 1.1, Pt)
    with pytest.raises(ArgumentError, match="teacher_probs.*\\[0, 1\\]"):
        attention_probability_loss(Ps, Pt - 0.5)
    bad = Ps.copy()
    bad[0, 0, 0] = [1.0, 0.0, 0.0]
    with pytest.raises(ArgumentError, match="student_probs.*infinite"):
        attention_probability_loss(bad, Pt)
    with pytest.raises(ShapeError, match="student_probs"):
        attention_probability_loss(Ps[0], Pt[0])
