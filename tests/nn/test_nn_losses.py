"""Loss values against hand computations and stability for large logits (grads: test_nn_grad)."""

import numpy as np
import pytest

from refcompress import nn
from refcompress.errors import ArgumentError, DTypeError, ShapeError
from refcompress.nn import functional as F


def test_cross_entropy_value_and_label_smoothing():
    z = np.array([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]])
    y = np.array([2, 0])
    logp = z - np.log(np.exp(z).sum(1, keepdims=True))
    v, g = nn.cross_entropy(z, y)
    assert v == pytest.approx(-(logp[0, 2] + logp[1, 0]) / 2, rel=1e-15)
    np.testing.assert_allclose(g.sum(axis=1), 0, atol=1e-15)  # rows of p - q sum to 0, a few ulps
    eps = 0.3
    v, _ = nn.cross_entropy(z, y, label_smoothing=eps)
    want = np.mean([-(1 - eps) * logp[i, y[i]] - eps / 3 * logp[i].sum() for i in range(2)])
    assert v == pytest.approx(want, rel=1e-14)
    per, g = nn.cross_entropy(z, y, reduction="none")
    assert per.shape == (2,)
    np.testing.assert_allclose(g, np.exp(logp) - np.eye(3)[y], rtol=1e-14)


def test_losses_are_stable_for_huge_logits():
    z = np.array([[1e4, -1e4, 0.0]], np.float32)
    v, g = nn.cross_entropy(z, np.array([1]))
    assert v == pytest.approx(2e4) and np.all(np.isfinite(g))
    v, g = nn.cross_entropy(z, np.array([0]))
    assert v == 0.0 and np.all(np.isfinite(g))
    v, g = nn.kl_div(z, z[:, ::-1].copy(), temperature=2.0)
    assert np.isfinite(v) and np.all(np.isfinite(g))
    assert np.all(np.isfinite(F.softmax(z))) and np.all(np.isfinite(F.log_softmax(z)))
    np.testing.assert_allclose(F.logsumexp(np.array([1000.0, 1000.0])), 1000 + np.log(2))


def test_kl_div_value():
    s = np.array([[0.0, 1.0], [2.0, -1.0]])
    t = np.array([[1.0, 0.0], [0.5, 0.5]])
    T = 2.0
    ps, pt = F.softmax(s / T), F.softmax(t / T)
    want = np.mean(np.sum(pt * np.log(pt / ps), axis=1))
    v, g = nn.kl_div(s, t, temperature=T)
    assert v == pytest.approx(want, rel=1e-14)
    np.testing.assert_allclose(g, (ps - pt) / (T * 2), rtol=1e-14)
    assert nn.kl_div(t, t)[0] == pytest.approx(0.0, abs=1e-16)


def test_mse_value():
    v, g = nn.mse(np.array([1.0, 2.0]), np.array([0.0, 4.0]))
    assert v == 2.5
    np.testing.assert_array_equal(g, [1.0, -2.0])


@pytest.mark.parametrize("call,err,match", [
    (lambda: nn.cross_entropy(np.zeros((2, 3)), np.array([0.0, 1.0])), DTypeError, "target: expected an integer dtype"),
    (lambda: nn.cross_entropy(np.zeros((2, 3)), np.array([0, 3])), ArgumentError, r"target: expected class indices in \[0, 2\]"),
    (lambda: nn.cross_entropy(np.zeros((2, 3)), np.array([0])), ShapeError, "target: expected shape"),
    (lambda: nn.cross_entropy(np.zeros(3), np.array([0])), ShapeError, "logits: expected a 2-D array"),
    (lambda: nn.cross_entropy(np.zeros((1, 3)), np.array([0]), reduction="avg"), ArgumentError, "reduction"),
    (lambda: nn.cross_entropy(np.zeros((1, 3)), np.array([0]), label_smoothing=1.5), ArgumentError, "label_smoothing"),
    (lambda: nn.mse(np.zeros(3), np.zeros(4)), ShapeError, "target: expected shape"),
    (lambda: nn.kl_div(np.zeros((1, 3)), np.zeros((1, 3)), temperature=0), ArgumentError, "temperature"),
    (lambda: nn.kl_div(np.zeros((1, 3)), np.zeros((1, 3), np.float32)), DTypeError, "teacher_logits"),
])
def test_loss_argument_errors(call, err, match):
    with pytest.raises(err, match=match):
        call()


def test_cross_entropy_with_a_minus_inf_non_target_logit_is_finite():
    # torch.nn.functional.cross_entropy([[0, -inf, 1]], [0]) = 1.3132617 (= log(1 + e))
    z = np.array([[0.0, -np.inf, 1.0]], np.float32)
    with np.errstate(invalid="raise"):
        value, grad = nn.cross_entropy(z, np.array([0]))
    assert np.isclose(value, np.log1p(np.e), rtol=1e-6)
    p = np.exp(np.array([0.0, 1.0])) / (1 + np.e)
    np.testing.assert_allclose(grad, [[p[0] - 1, 0.0, p[1]]], rtol=1e-6)
    # finite logits: the same values as the plain formula
    x = np.random.default_rng(0).standard_normal((5, 4))
    t = np.array([0, 1, 2, 3, 0])
    want = -F.log_softmax(x, axis=1)[np.arange(5), t]
    np.testing.assert_array_equal(nn.cross_entropy(x, t, reduction="none")[0], want)
