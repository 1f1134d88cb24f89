"""Layer semantics beyond gradients: batch-norm statistics, pooling, dropout, bad input,
non-contiguous input."""

import numpy as np
import pytest

from refcompress import nn
from refcompress.errors import ArgumentError, DTypeError, RefcompressError, ShapeError


def test_batchnorm_running_stats_follow_pytorch():
    rng = np.random.default_rng(0)
    bn = nn.BatchNorm2d(3, momentum=0.2).to(np.float64)
    x = rng.standard_normal((4, 3, 2, 5)) * 2 + 1
    y = bn(x)
    mu, var = x.mean(axis=(0, 2, 3)), x.var(axis=(0, 2, 3))  # biased, to normalise
    np.testing.assert_allclose(y, (x - mu[None, :, None, None]) / np.sqrt(var + 1e-5)[None, :, None, None], rtol=1e-12)
    np.testing.assert_allclose(bn.running_mean, 0.2 * mu, rtol=1e-12)
    np.testing.assert_allclose(bn.running_var, 0.8 + 0.2 * var * 40 / 39, rtol=1e-12)  # unbiased
    assert int(bn.num_batches_tracked) == 1
    bn.eval()
    z = rng.standard_normal((2, 3, 2, 2))
    want = (z - bn.running_mean[None, :, None, None]) / np.sqrt(bn.running_var + 1e-5)[None, :, None, None]
    np.testing.assert_allclose(bn(z), want, rtol=1e-12)


def test_batchnorm_cumulative_average_when_momentum_is_none():
    rng = np.random.default_rng(1)
    bn = nn.BatchNorm1d(2, momentum=None).to(np.float64)
    xs = [rng.standard_normal((5, 2)) for _ in range(3)]
    for x in xs:
        bn(x)
    np.testing.assert_allclose(bn.running_mean, np.mean([x.mean(0) for x in xs], axis=0), rtol=1e-12)
    np.testing.assert_allclose(bn.running_var, np.mean([x.var(0, ddof=1) for x in xs], axis=0), rtol=1e-12)


def test_pooling_values():
    x = np.arange(16, dtype=np.float32).reshape(1, 1, 4, 4)
    np.testing.assert_array_equal(nn.MaxPool2d(2)(x)[0, 0], [[5, 7], [13, 15]])
    np.testing.assert_array_equal(nn.AvgPool2d(2)(x)[0, 0], [[2.5, 4.5], [10.5, 12.5]])
    # padding: max ignores it (-inf), avg counts it as zeros (count_include_pad=True)
    np.testing.assert_array_equal(nn.MaxPool2d(3, 2, 1)(-x - 1)[0, 0], [[-1, -2], [-5, -6]])
    assert nn.AvgPool2d(3, 2, 1)(x)[0, 0, 0, 0] == np.float32((0 + 1 + 4 + 5) / 9)
    np.testing.assert_array_equal(nn.GlobalAvgPool2d()(x), [[7.5]])
    assert nn.Flatten()(np.zeros((2, 3, 4, 5), np.float32)).shape == (2, 60)


def test_maxpool_backward_sends_gradient_to_first_maximum_on_ties():
    pool = nn.MaxPool2d(2)
    pool(np.ones((1, 1, 2, 2), np.float32))
    np.testing.assert_array_equal(pool.backward(np.ones((1, 1, 1, 1), np.float32))[0, 0], [[1, 0], [0, 0]])


def test_dropout_is_inverted_and_identity_in_eval():
    d = nn.Dropout(0.25, rng=np.random.default_rng(0))
    x = np.ones((200, 50), np.float32)
    y = d(x)
    assert set(np.unique(y)) == {0.0, np.float32(1 / 0.75)}
    assert abs((y == 0).mean() - 0.25) < 0.02
    np.testing.assert_array_equal(d.backward(x), y)
    d.eval()
    assert d(x) is x
    assert not nn.Dropout(1.0)(x).any()


def test_non_contiguous_inputs_give_the_same_results():
    rng = np.random.default_rng(0)
    base = rng.standard_normal((3, 6, 10, 7)).astype(np.float32)
    x = base[:, ::2, ::2, :]  # strided view
    xt = np.ascontiguousarray(base.transpose(0, 1, 3, 2)).transpose(0, 1, 3, 2)  # F-like layout
    layers = [nn.Conv2d(3, 4, 3, stride=2, padding=1, groups=1, rng=rng), nn.MaxPool2d(2),
              nn.AvgPool2d(3, 1, 1), nn.GlobalAvgPool2d(), nn.BatchNorm2d(3), nn.ReLU(), nn.Flatten()]
    for layer in layers:
        want = layer(np.ascontiguousarray(x))
        g_want = layer.backward(np.ones_like(want))
        np.testing.assert_array_equal(layer(x), want)
        np.testing.assert_array_equal(layer.backward(np.ones_like(want)[..., ::-1][..., ::-1]), g_want)
    bn = nn.BatchNorm2d(6)
    np.testing.assert_array_equal(bn(xt), bn(np.ascontiguousarray(xt)))
    lin = nn.Linear(5, 2, rng=rng)
    m = rng.standard_normal((5, 4)).astype(np.float32).T
    np.testing.assert_array_equal(lin(m), lin(np.ascontiguousarray(m)))


@pytest.mark.parametrize("make,err,match", [
    (lambda: nn.Conv2d(3, 4, 0), ArgumentError, r"kernel_size: expected an integer in \[1, inf\], got 0"),
    (lambda: nn.Conv2d(3, 4, 3, stride=0), ArgumentError, "stride"),
    (lambda: nn.Conv2d(3, 4, 3, padding=-1), ArgumentError, "padding"),
    (lambda: nn.Conv2d(3, 4, 3, dilation=(1, 0)), ArgumentError, "dilation"),
    (lambda: nn.Conv2d(3, 4, 3, groups=2), ArgumentError, "groups: expected a divisor of in_channels=3 and out_channels=4, got 2"),
    (lambda: nn.Conv2d(4, 6, 3, groups=4), ArgumentError, "groups"),
    (lambda: nn.Conv2d(3, 4, 2.5), DTypeError, "kernel_size"),
    (lambda: nn.Conv2d(3, 4, 3, bias=1), DTypeError, "bias: expected a bool"),
    (lambda: nn.Linear(0, 3), ArgumentError, "in_features"),
    (lambda: nn.MaxPool2d(2, padding=2), ArgumentError, "padding: expected at most half"),
    (lambda: nn.Dropout(1.5), ArgumentError, "p: expected a number in"),
    (lambda: nn.BatchNorm2d(3, eps=0), ArgumentError, "eps"),
])
def test_constructors_reject_bad_arguments(make, err, match):
    with pytest.raises(err, match=match):
        make()


@pytest.mark.parametrize("layer,x,err,match", [
    (nn.Conv2d(3, 4, 3), np.zeros((3, 5, 5), np.float32), ShapeError, r"x: expected a 4-D array, got shape \(3, 5, 5\)"),
    (nn.Conv2d(3, 4, 3), np.zeros((1, 2, 5, 5), np.float32), ShapeError, r"x: expected 3 channels .* got shape \(1, 2, 5, 5\)"),
    (nn.Conv2d(3, 4, 3, dilation=3), np.zeros((1, 3, 5, 5), np.float32), ShapeError, "x: spatial size"),
    (nn.Conv2d(3, 4, 3), np.zeros((1, 3, 5, 5), np.int32), DTypeError, "x: expected dtype float32, got int32"),
    (nn.Linear(3, 2), np.zeros((2, 4), np.float32), ShapeError, r"x: expected last dimension 3"),
    (nn.BatchNorm2d(3), np.zeros((2, 4, 2, 2), np.float32), ShapeError, "x: expected 3 channels"),
    (nn.BatchNorm1d(3), np.zeros((2, 3, 2, 2), np.float32), ShapeError, "x: expected a 2 or 3-D array"),
    (nn.BatchNorm1d(3), np.zeros((1, 3), np.float32), ShapeError, "more than 1 value per channel"),
    (nn.MaxPool2d(2), np.zeros((1, 1, 4), np.float32), ShapeError, "x: expected a 4-D array"),
    (nn.ReLU(), np.zeros(3, np.int64), DTypeError, "x: expected dtype float16, float32, float64"),
    (nn.Linear(3, 2), [[1, 2]], DTypeError, "x: expected dtype float32"),
])
def test_forward_rejects_bad_input(layer, x, err, match):
    with pytest.raises(err, match=match):
        layer(x)


def test_backward_checks_grad_out_and_cache():
    conv = nn.Conv2d(1, 2, 3)
    with pytest.raises(RefcompressError, match="no cached forward"):
        conv.backward(np.zeros((1, 2, 3, 3), np.float32))
    conv(np.zeros((1, 1, 5, 5), np.float32))
    with pytest.raises(ShapeError, match=r"grad_out: expected shape \(1, 2, 3, 3\)"):
        conv.backward(np.zeros((1, 2, 4, 4), np.float32))


def test_relu_propagates_nan_as_pytorch():
    # torch.relu([nan, -1, 2, 0]) = [nan, 0, 2, 0]; its backward passes G at the NaN
    r = nn.ReLU()
    x = np.array([np.nan, -1, 2, 0], np.float32)
    y = r(x)
    np.testing.assert_array_equal(y, np.array([np.nan, 0, 2, 0], np.float32))
    np.testing.assert_array_equal(r.backward(np.ones(4, np.float32)), [1, 0, 1, 0])


@pytest.mark.parametrize("layer,shape,out_shape", [
    (lambda: nn.Conv2d(4, 2, 3, padding=1, groups=2), (0, 4, 5, 5), (0, 2, 5, 5)),
    (lambda: nn.Conv2d(3, 2, 3, stride=2), (0, 3, 5, 5), (0, 2, 2, 2)),
    (lambda: nn.MaxPool2d(2), (0, 3, 4, 4), (0, 3, 2, 2)),
    (lambda: nn.AvgPool2d(3, 1, 1), (0, 3, 4, 4), (0, 3, 4, 4)),
    (lambda: nn.Flatten(), (0, 3, 4, 4), (0, 48)),
    (lambda: nn.GlobalAvgPool2d(), (0, 3, 4, 4), (0, 3)),
])
def test_empty_batch_forward_and_backward(layer, shape, out_shape):
    # PyTorch: an N = 0 batch gives an N = 0 output, an N = 0 input gradient and zero
    # parameter gradients
    m = layer()
    y = m(np.zeros(shape, np.float32))
    assert y.shape == out_shape and y.dtype == np.float32
    dx = m.backward(np.zeros(out_shape, np.float32))
    assert dx.shape == shape and dx.dtype == np.float32
    for p in m.parameters():
        np.testing.assert_array_equal(p.grad, np.zeros(p.shape, np.float32))


@pytest.mark.parametrize("p", [0.0, 0.5])
def test_dropout_backward_checks_the_gradient_shape_for_every_p(p):
    from refcompress.errors import ShapeError
    d = nn.Dropout(p, rng=np.random.default_rng(0))
    d(np.ones((2, 3), np.float32))
    with pytest.raises(ShapeError, match=r"grad_out: expected shape \(2, 3\), got \(7, 5\)"):
        d.backward(np.ones((7, 5), np.float32))
    assert d.backward(np.ones((2, 3), np.float32)).shape == (2, 3)
