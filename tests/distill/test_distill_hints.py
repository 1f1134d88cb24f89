"""FitNets hints (Romero et al. 2015): the loss, the regressor, gradients through both.

Gradient tolerance: see refcompress/testing/gradcheck.py (element-wise 1e-6 + 1e-5 |analytic|).
"""

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from refcompress import nn
from refcompress.distill import Hint, hint_loss, make_regressor
from refcompress.errors import ArgumentError, DTypeError, ShapeError

from refcompress.testing.gradcheck import assert_grad, numeric_grad

SEEDS = st.integers(0, 2**31)
FEW = settings(max_examples=15)


@FEW
@given(seed=SEEDS, shape=st.sampled_from([(1, 3), (3, 5), (2, 2, 3, 3)]))
def test_hint_loss_gradient(seed, shape):
    rng = np.random.default_rng(seed)
    r, u = rng.normal(size=shape), rng.normal(size=shape)
    v, g = hint_loss(r, u)
    assert v == pytest.approx(0.5 * np.sum((u - r) ** 2) / shape[0], rel=1e-12)
    assert_grad(numeric_grad(lambda: hint_loss(r, u)[0], r), g, "hint loss grad")


@FEW
@given(seed=SEEDS, n=st.integers(1, 3), ws=st.integers(1, 4), wt=st.integers(1, 5),
       conv=st.booleans(), weight=st.sampled_from([1.0, 0.25]))
def test_hint_gradient_through_the_regressor(seed, n, ws, wt, conv, weight):
    rng = np.random.default_rng(seed)
    shp = (lambda w: (n, w, 2, 3)) if conv else (lambda w: (n, w))
    v, u = rng.normal(size=shp(ws)), rng.normal(size=shp(wt))
    hint = Hint.from_features(v, u, force=True, rng=np.random.default_rng(seed + 1))
    assert isinstance(hint.regressor, nn.Conv2d if conv else nn.Linear)
    hint.regressor.zero_grad()
    value, gv = hint.loss(v, u, weight=weight)
    grads = {name: p.grad.copy() for name, p in hint.regressor.named_parameters()}

    def f():
        return weight * hint.loss(v, u)[0]

    hint.regressor.zero_grad()
    assert_grad(numeric_grad(f, v), gv, "d HT / d student features")
    for name, p in hint.regressor.named_parameters():
        assert_grad(numeric_grad(f, p.data), grads[name], f"d HT / d regressor {name}")


def test_equal_widths_give_identity_unless_forced():
    v = np.ones((2, 4, 3, 3), np.float32)
    assert make_regressor(v, v) is None
    r = make_regressor(v, v, force=True)
    assert isinstance(r, nn.Conv2d) and r.kernel_size == (1, 1) and r.weight.dtype == np.float32
    value, g = Hint(None).loss(v, v * 2)
    assert value == pytest.approx(0.5 * 36 * 1.0)
    np.testing.assert_allclose(g, -v / 2)


def test_regressor_has_student_dtype():
    r = make_regressor(np.zeros((2, 3)), np.zeros((2, 7)))
    assert isinstance(r, nn.Linear) and r.weight.dtype == np.float64
    assert (r.in_features, r.out_features) == (3, 7)


def test_hint_errors():
    with pytest.raises(ShapeError, match="student_features.*spatial"):
        make_regressor(np.zeros((2, 3, 4, 4)), np.zeros((2, 5, 2, 2)))
    with pytest.raises(ShapeError, match="teacher_features"):
        make_regressor(np.zeros((2, 3, 4, 4)), np.zeros((2, 5)))
    with pytest.raises(ShapeError, match="teacher_features"):
        hint_loss(np.zeros((2, 3)), np.zeros((2, 4)))
    with pytest.raises(DTypeError, match="regressor"):
        Hint("linear")
    hint = Hint(nn.Linear(3, 5).to(np.float64))
    with pytest.raises(ShapeError, match="student_features"):
        hint.loss(np.zeros((2, 4)), np.zeros((2, 5)))
    with pytest.raises(ArgumentError, match="weight"):
        hint.loss(np.zeros((2, 3)), np.zeros((2, 5)), weight=-1.0)
