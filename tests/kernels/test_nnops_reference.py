"""The reference transformer ops against independent definitions (math.erf, the formula)."""

import math

import numpy as np
import pytest

from refcompress.errors import ArgumentError, DTypeError, ShapeError
from refcompress.kernels import nnops


def test_erf_within_documented_bound():
    x = np.concatenate([np.linspace(-9, 9, 40001), [0.0, -0.0, 1e-30, -1e-30]])
    exact = np.array([math.erf(v) for v in x])
    assert np.max(np.abs(nnops.erf(x) - exact)) <= nnops.ERF_ABS_ERROR
    assert nnops.erf(np.float32([2.0])).dtype == np.float32


def test_gelu_is_x_phi_x():
    x = np.linspace(-10, 10, 2001)
    exact = np.array([0.5 * v * (1 + math.erf(v / math.sqrt(2))) for v in x])
    bound = 0.5 * np.abs(x) * nnops.ERF_ABS_ERROR + 1e-15
    assert np.all(np.abs(nnops.gelu(x) - exact) <= bound)


def test_layer_norm_matches_formula_and_refuses_bad_input():
    rng = np.random.default_rng(0)
    x = rng.normal(3, 2, (4, 7, 5)).astype(np.float32)
    g, b = rng.normal(size=5).astype(np.float32), rng.normal(size=5).astype(np.float32)
    y = nnops.layer_norm(x, g, b, eps=1e-5)
    m, v = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
    np.testing.assert_allclose(y, (x - m) / np.sqrt(v + 1e-5) * g + b, rtol=1e-5, atol=1e-5)
    assert y.dtype == np.float32 and y.shape == x.shape
    with pytest.raises(ShapeError, match="weight"):
        nnops.layer_norm(x, g[:4], b)
    with pytest.raises(DTypeError, match="bias"):
        nnops.layer_norm(x, g, b.astype(np.float64))
    with pytest.raises(ArgumentError, match="eps"):
        nnops.layer_norm(x, g, b, eps=0.0)
