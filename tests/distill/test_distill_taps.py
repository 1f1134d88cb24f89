"""Taps: reading inner outputs through forward hooks and injecting their gradients.

Gradient tolerance: see refcompress/testing/gradcheck.py (element-wise 1e-6 + 1e-5 |analytic|).
"""

import numpy as np
import pytest

from refcompress import nn
from refcompress.distill import Taps, attention_transfer_loss
from refcompress.errors import ArgumentError, DTypeError, RefcompressError, ShapeError

from refcompress.testing.gradcheck import assert_grad, numeric_grad


def _cnn(seed=0):
    rng = np.random.default_rng(seed)
    return nn.Sequential(nn.Conv2d(1, 3, 3, padding=1, rng=rng), nn.ReLU(),
                         nn.Conv2d(3, 4, 3, padding=1, rng=rng), nn.ReLU(),
                         nn.GlobalAvgPool2d(), nn.Linear(4, 5, rng=rng)).to(np.float64)


def test_read_returns_the_inner_outputs_of_the_last_forward():
    m = _cnn()
    x = np.random.default_rng(1).normal(size=(2, 1, 5, 5))
    with Taps(m, ["1", "3"]) as taps:
        m(x)
        h1 = m[1](m[0](x))
        np.testing.assert_array_equal(taps["1"], h1)
        np.testing.assert_array_equal(taps.read()["3"], m[3](m[2](h1)))
    assert not taps.attached
    assert all(not mod._forward_hooks for mod in m.modules())


def test_taps_work_in_eval_mode_and_do_not_copy_the_model():
    m = _cnn().eval()
    sd = m.state_dict()
    taps = Taps(m, ["3"])
    out = m(np.ones((1, 1, 4, 4)))
    assert taps["3"].shape == (1, 4, 4, 4) and out.shape == (1, 5)
    assert taps.model is m
    taps.remove()
    for k, v in m.state_dict().items():
        np.testing.assert_array_equal(v, sd[k])


def test_injected_gradient_equals_the_chain_rule():
    # L = sum(R * logits) + AT(tapped "1", fixed teacher map) + sum(P * tapped "3"):
    # one backward of dL/dlogits with the tap gradients injected must equal finite
    # differences of L for the input and every parameter.
    m = _cnn(2)
    rng = np.random.default_rng(3)
    x = rng.normal(size=(2, 1, 4, 4))
    R = rng.normal(size=(2, 5))
    At = rng.normal(size=(2, 6, 4, 4))
    P = rng.normal(size=(2, 4, 4, 4))
    taps = Taps(m, ["1", "3"], inject=True)

    def total():
        out = m(x)
        v, _ = attention_transfer_loss(taps["1"], At, beta=2.0, squared=True)
        return float(np.sum(R * out) + v + np.sum(P * taps["3"]))

    m.train()
    m.zero_grad()
    m(x)
    _, g1 = attention_transfer_loss(taps["1"], At, beta=2.0, squared=True)
    taps.add_grad("1", g1)
    taps.add_grad("3", P)
    gx = m.backward(R)
    assert taps.unconsumed() == []
    grads = {n: p.grad.copy() for n, p in m.named_parameters()}
    assert_grad(numeric_grad(total, x), gx, "d L / d x")
    for n, p in m.named_parameters():
        assert_grad(numeric_grad(total, p.data), grads[n], f"d L / d {n}")
    taps.remove()
    assert "backward" not in m[1].__dict__ and "backward" not in m[3].__dict__


def test_pending_gradient_is_consumed_once_and_dropped_by_a_new_forward():
    m = _cnn()
    x = np.ones((1, 1, 3, 3))
    taps = Taps(m, ["3"], inject=True)
    m.train()
    m(x)
    taps.add_grad("3", np.ones_like(taps["3"]))
    m.zero_grad()
    m.backward(np.zeros((1, 5)))
    with_grad = m[2].weight.grad.copy()
    assert np.any(with_grad != 0)
    m.zero_grad()
    m.backward(np.zeros((1, 5)))                  # nothing pending any more
    np.testing.assert_array_equal(m[2].weight.grad, 0)
    m(x)
    taps.add_grad("3", np.ones_like(taps["3"]))
    m(x)                                          # a new forward drops the stale gradient
    assert taps.unconsumed() == []


def test_top_level_module_can_be_tapped_and_nested_taps_unwind():
    m = _cnn()
    outer = Taps(m, ["3"], inject=True)
    inner = Taps(m, ["3", ""], inject=True)
    m.train()
    x = np.ones((1, 1, 3, 3))
    m(x)
    inner.add_grad("3", np.ones_like(inner["3"]))
    outer.add_grad("3", np.ones_like(outer["3"]))
    m.zero_grad()
    m.backward(np.zeros((1, 5)))
    assert inner.unconsumed() == [] and outer.unconsumed() == []
    with pytest.raises(RefcompressError, match="reverse order"):
        outer.remove()
    inner.remove()
    outer.remove()
    assert "backward" not in m[3].__dict__ and "backward" not in m.__dict__


def test_tap_errors():
    m = _cnn()
    with pytest.raises(ArgumentError, match="names: model has no submodule '9'"):
        Taps(m, ["9"])
    with pytest.raises(ArgumentError, match="distinct"):
        Taps(m, ["1", "1"])
    with pytest.raises(DTypeError, match="names"):
        Taps(m, "1")
    with pytest.raises(DTypeError, match="model"):
        Taps("model", ["1"])
    taps = Taps(m, ["1"])
    with pytest.raises(RefcompressError, match="not run a forward"):
        taps.read("1")
    m(np.ones((1, 1, 3, 3)))
    with pytest.raises(RefcompressError, match="inject=False"):
        taps.add_grad("1", np.ones_like(taps["1"]))
    with pytest.raises(ArgumentError, match="name"):
        taps.read("3")
    taps.remove()
    inj = Taps(m, ["1"], inject=True)
    m(np.ones((1, 1, 3, 3)))
    with pytest.raises(ShapeError, match="grad"):
        inj.add_grad("1", np.ones((1, 3, 2, 2)))
    inj.remove()
