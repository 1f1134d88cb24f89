"""Every layer's and loss's backward against central finite differences (float64).

Tolerance and its derivation: see refcompress/testing/gradcheck.py (|num - ana| <= 1e-6 + 1e-5 |ana|,
element by element, for the input and every parameter).
"""

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from refcompress import nn
from refcompress.nn import functional as F

from refcompress.testing.gradcheck import check_loss, check_module

SEEDS = st.integers(0, 2**31)
FEW = settings(max_examples=12)


def away_from_zero(rng, shape, margin=1e-2):
    x = rng.standard_normal(shape)
    return np.where(np.abs(x) < margin, margin * np.sign(x + 1e-12) + x, x)


def distinct(rng, shape, gap=1e-2):
    # a shuffled grid: any two entries differ by >= gap, so no max is within h of a tie
    return rng.permutation(int(np.prod(shape))).reshape(shape) * gap - 0.5


@st.composite
def conv_cases(draw, depthwise=False):
    groups = draw(st.integers(1, 3))
    cg = 1 if depthwise else draw(st.integers(1, 2))
    og = draw(st.integers(1, 2))
    k = (draw(st.integers(1, 3)), draw(st.sampled_from([1, 2, 3, 5])))
    s = (draw(st.integers(1, 3)), draw(st.integers(1, 2)))
    p = (draw(st.integers(0, 2)), draw(st.integers(0, 1)))
    d = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    hw = tuple(max(1, d[i] * (k[i] - 1) + 1 - 2 * p[i]) + draw(st.sampled_from([0, 1, 2, 4]))
               for i in range(2))
    n = draw(st.integers(1, 2))
    bias = draw(st.booleans())
    return dict(in_channels=cg * groups, out_channels=og * groups, kernel_size=k, stride=s,
                padding=p, dilation=d, groups=groups, bias=bias), (n, cg * groups) + hw


@FEW
@given(conv_cases(), SEEDS)
def test_conv2d_grad(case, seed):
    cfg, shape = case
    rng = np.random.default_rng(seed)
    check_module(nn.Conv2d(**cfg, rng=rng), rng.standard_normal(shape), seed)


@FEW
@given(conv_cases(depthwise=True), SEEDS)
def test_depthwise_conv2d_grad(case, seed):
    cfg, shape = case
    rng = np.random.default_rng(seed)
    check_module(nn.Conv2d(**cfg, rng=rng), rng.standard_normal(shape), seed)


@pytest.mark.parametrize("cfg,shape", [
    (dict(in_channels=3, out_channels=5, kernel_size=3, stride=2, padding=1), (1, 3, 7, 5)),
    (dict(in_channels=6, out_channels=6, kernel_size=(3, 1), groups=6, dilation=2), (2, 6, 7, 3)),
    (dict(in_channels=4, out_channels=2, kernel_size=1, groups=2, bias=False), (1, 4, 1, 1)),
])
def test_conv2d_grad_fixed_cases(cfg, shape):
    rng = np.random.default_rng(7)
    check_module(nn.Conv2d(**cfg, rng=rng), rng.standard_normal(shape))


@FEW
@given(conv_cases(), SEEDS)
def test_conv2d_forward_equals_naive_loops(case, seed):
    cfg, shape = case
    rng = np.random.default_rng(seed)
    conv = nn.Conv2d(**cfg, rng=rng).to(np.float64)
    x = rng.standard_normal(shape)
    b = None if conv.bias is None else conv.bias.data
    ref = F.conv2d_naive(x, conv.weight.data, b, conv.stride, conv.padding, conv.dilation, conv.groups)
    # float64 sums of <= 30 products in a different order: a few ulps of the largest term
    np.testing.assert_allclose(conv(x), ref, rtol=1e-12, atol=1e-12)


@FEW
@given(st.integers(1, 3), st.integers(1, 5), st.integers(1, 4), st.booleans(), SEEDS)
def test_linear_grad(n, fin, fout, bias, seed):
    rng = np.random.default_rng(seed)
    check_module(nn.Linear(fin, fout, bias=bias, rng=rng), rng.standard_normal((n, fin)), seed)


def test_linear_grad_with_extra_leading_dims():
    rng = np.random.default_rng(1)
    check_module(nn.Linear(3, 2, rng=rng), rng.standard_normal((2, 3, 3)))


@FEW
@given(st.lists(st.integers(1, 4), min_size=1, max_size=4), SEEDS)
def test_relu_grad(shape, seed):
    check_module(nn.ReLU(), away_from_zero(np.random.default_rng(seed), shape), seed)


@st.composite
def pool_cases(draw):
    k = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    s = draw(st.one_of(st.none(), st.tuples(st.integers(1, 3), st.integers(1, 3))))
    p = (draw(st.integers(0, k[0] // 2)), draw(st.integers(0, k[1] // 2)))
    hw = tuple(max(1, k[i] - 2 * p[i]) + draw(st.integers(0, 3)) for i in range(2))
    return k, s, p, (draw(st.integers(1, 2)), draw(st.integers(1, 3))) + hw


@FEW
@given(pool_cases(), SEEDS)
def test_maxpool_grad(case, seed):
    k, s, p, shape = case
    check_module(nn.MaxPool2d(k, s, p), distinct(np.random.default_rng(seed), shape), seed)


@FEW
@given(pool_cases(), SEEDS)
def test_avgpool_grad(case, seed):
    k, s, p, shape = case
    check_module(nn.AvgPool2d(k, s, p), np.random.default_rng(seed).standard_normal(shape), seed)


@FEW
@given(st.tuples(st.integers(1, 2), st.integers(1, 3), st.integers(1, 4), st.integers(1, 5)), SEEDS)
def test_global_avgpool_and_flatten_grad(shape, seed):
    x = np.random.default_rng(seed).standard_normal(shape)
    check_module(nn.GlobalAvgPool2d(), x, seed)
    check_module(nn.Flatten(), x, seed)


@FEW
@given(st.integers(2, 4), st.integers(1, 3), st.sampled_from([None, 1, 3]), st.booleans(), SEEDS)
def test_batchnorm_grad(n, c, length, affine, seed):
    rng = np.random.default_rng(seed)
    if length is None:
        bn, shape = nn.BatchNorm1d(c, affine=affine), (n, c)
    else:
        bn, shape = nn.BatchNorm2d(c, affine=affine), (n, c, length, 2)
    if affine:  # non-trivial gamma, beta so their role in the backward is exercised
        bn.weight.data = rng.uniform(0.5, 2.0, c).astype(np.float32)
        bn.bias.data = rng.standard_normal(c).astype(np.float32)
    check_module(bn, rng.standard_normal(shape) * 3 + 1, seed)


def test_batchnorm1d_grad_on_3d_input():
    rng = np.random.default_rng(3)
    check_module(nn.BatchNorm1d(2), rng.standard_normal((2, 2, 3)))


@FEW
@given(st.floats(0.0, 0.9), SEEDS)
def test_dropout_grad(p, seed):
    layer = nn.Dropout(p)

    def same_mask():  # the finite differences need the same mask at every forward
        layer._rng = np.random.default_rng(seed)

    check_module(layer, np.random.default_rng(seed).standard_normal((3, 4)), seed, same_mask)


def test_sequential_grad_through_a_small_smooth_network():
    rng = np.random.default_rng(0)
    net = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1, rng=rng), nn.BatchNorm2d(3), nn.AvgPool2d(2),
                        nn.Flatten(), nn.Linear(12, 4, rng=rng), nn.BatchNorm1d(4), nn.Linear(4, 2, rng=rng))
    check_module(net, rng.standard_normal((3, 2, 4, 4)))


# -- losses ------------------------------------------------------------------------------
@FEW
@given(st.integers(1, 4), st.integers(2, 5), st.sampled_from(["mean", "sum"]), st.floats(0.0, 0.5), SEEDS)
def test_cross_entropy_grad(n, c, reduction, smoothing, seed):
    rng = np.random.default_rng(seed)
    check_loss(nn.cross_entropy, rng.standard_normal((n, c)) * 3, rng.integers(0, c, n),
               reduction=reduction, label_smoothing=smoothing)


@FEW
@given(st.lists(st.integers(1, 4), min_size=1, max_size=3), st.sampled_from(["mean", "sum"]), SEEDS)
def test_mse_grad(shape, reduction, seed):
    rng = np.random.default_rng(seed)
    check_loss(nn.mse, rng.standard_normal(shape), rng.standard_normal(shape), reduction=reduction)


@FEW
@given(st.integers(1, 4), st.integers(2, 5), st.floats(0.5, 8.0), SEEDS)
def test_kl_div_grad(n, c, temperature, seed):
    rng = np.random.default_rng(seed)
    check_loss(nn.kl_div, rng.standard_normal((n, c)) * 3, rng.standard_normal((n, c)) * 3,
               temperature=temperature)


def test_check_module_reports_an_unfilled_grad_and_a_wrong_dx_as_failed_checks():
    from refcompress.testing.gradcheck import check_module

    class Forgot(nn.Module):             # never fills a.grad
        def __init__(self):
            super().__init__()
            self.a = nn.Parameter(np.ones(1, np.float32))

        def forward(self, x):
            return self.a.data * x

        def backward(self, g):
            return g * self.a.data

    with pytest.raises(AssertionError, match=r"grad wrt a: backward left .grad None"):
        check_module(Forgot(), np.ones((2, 2)))

    class Float32Dx(nn.Module):          # returns a float32 dx
        def forward(self, x):
            return 2 * x

        def backward(self, g):
            return (2 * g).astype(np.float32)

    with pytest.raises(AssertionError, match=r"grad wrt input: backward returned float32 shape \(2, 2\), "
                                             r"expected float64"):
        check_module(Float32Dx(), np.ones((2, 2)))
