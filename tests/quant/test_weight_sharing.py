"""Deep Compression weight sharing: k-means with linear init, centroid gradients, storage."""

import numpy as np
import pytest

from refcompress import quant as Q
from refcompress.errors import ArgumentError, ShapeError


def test_recovers_exact_clusters():
    rng = np.random.default_rng(0)
    centers = np.array([-1.0, -0.125, 0.875, 2.0], np.float32)  # near the linear init
    w = rng.choice(centers, size=(30, 20)).astype(np.float32)
    sw = Q.kmeans_share(w, 2)
    np.testing.assert_array_equal(np.sort(sw.codebook), centers)
    np.testing.assert_array_equal(sw.dense(), w)


def test_assignment_is_nearest_centroid_and_lloyd_never_increases_error():
    rng = np.random.default_rng(1)
    w = rng.standard_normal(2000).astype(np.float32)
    errs = []
    for it in (1, 2, 5, 20):
        sw = Q.kmeans_share(w, 3, n_iter=it)
        d = np.abs(w[:, None] - sw.codebook[None, :])
        assert np.all(d[np.arange(w.size), sw.indices] <= d.min(axis=1) + 1e-7)
        errs.append(float(np.sum((sw.dense() - w) ** 2)))
    assert all(b <= a + 1e-6 for a, b in zip(errs, errs[1:]))


def test_mask_keeps_pruned_weights_zero_and_storage_counts_only_shared():
    rng = np.random.default_rng(2)
    w = rng.standard_normal((10, 10)).astype(np.float32)
    mask = np.abs(w) > 0.8
    w = np.where(mask, w, 0).astype(np.float32)
    sw = Q.kmeans_share(w, 3, mask=mask)
    assert np.all(sw.dense()[~mask] == 0)
    assert sw.stored_bytes() == 8 * 4 + (int(mask.sum()) * 3 + 7) // 8
    np.testing.assert_array_equal(
        Q.unpack_bits(sw.packed_indices(), 3, int(mask.sum()), signed=False), sw.indices[mask])


def test_centroid_gradient_is_the_sum_over_each_cluster():
    w = np.array([0.0, 0.1, 1.0, 1.1], np.float32)
    sw = Q.kmeans_share(w, 1)
    g = np.array([1.0, 2.0, 3.0, 4.0], np.float32)
    lo = int(np.argmin(sw.codebook))
    got = Q.centroid_gradients(g, sw)
    assert got[lo] == 3.0 and got[1 - lo] == 7.0


def test_bad_inputs():
    with pytest.raises(ShapeError, match="mask"):
        Q.kmeans_share(np.zeros(4, np.float32), 2, mask=np.ones(3, bool))
    with pytest.raises(ArgumentError, match="w: no weights"):
        Q.kmeans_share(np.zeros(4, np.float32), 2, mask=np.zeros(4, bool))
    with pytest.raises(ArgumentError, match="bits"):
        Q.kmeans_share(np.zeros(4, np.float32), 0)


def test_shared_linear_forward_backward_and_fine_tuning():
    from refcompress import nn

    nn.manual_seed(0)
    lin = nn.Linear(12, 5)
    layer = Q.SharedLinear.from_linear(lin, 3)
    x = np.random.default_rng(0).standard_normal((7, 12)).astype(np.float32)
    w = layer.shared().dense()
    np.testing.assert_allclose(layer(x), x @ w.T + lin.bias.data, rtol=1e-6)
    layer.train()
    y = layer(x)
    g = np.random.default_rng(1).standard_normal(y.shape).astype(np.float32)
    gx = layer.backward(g)
    np.testing.assert_allclose(gx, g @ w, rtol=1e-5)
    gw = g.T @ x
    np.testing.assert_allclose(layer.codebook.grad,
                               np.bincount(layer.indices.ravel(), gw.ravel(), minlength=8), rtol=1e-4, atol=1e-5)
    assert layer.packed_bytes() == 8 * 4 + (60 * 3 + 7) // 8 + 5 * 4
    spec = nn.to_spec(layer)
    again = nn.from_spec(spec)
    again.load_state_dict(layer.state_dict())
    np.testing.assert_array_equal(again.eval()(x), layer.eval()(x))


def test_shared_conv_trains_its_codebook_through_conv_backward():
    from refcompress import nn

    nn.manual_seed(3)
    conv = nn.Conv2d(3, 4, 3, padding=1)
    mask = np.abs(conv.weight.data) > 0.05
    layer = Q.SharedConv2d.from_conv(conv, 2, mask=mask)
    assert "weight" not in layer.state_dict() and "codebook" in layer.state_dict()
    x = np.random.default_rng(3).standard_normal((2, 3, 5, 5)).astype(np.float32)
    w = layer.shared().dense()
    ref = nn.functional.conv2d(x, w, conv.bias.data, 1, 1)
    layer.train()
    np.testing.assert_allclose(layer(x), ref, rtol=1e-5, atol=1e-6)
    g = np.ones_like(ref)
    layer.backward(g)
    dense = nn.Conv2d(3, 4, 3, padding=1)
    dense.weight.data = w.copy()
    dense.bias.data = conv.bias.data.copy()
    dense.train()
    dense(x)
    dense.backward(g)
    want = np.bincount(layer.indices[mask].ravel(), dense.weight.grad[mask].ravel(), minlength=4)
    np.testing.assert_allclose(layer.codebook.grad, want, rtol=1e-4, atol=1e-5)
    again = nn.from_spec(nn.to_spec(layer))
    again.load_state_dict(layer.state_dict())
    np.testing.assert_array_equal(again.eval()(x), layer.eval()(x))


def test_kmeans_share_refuses_non_finite_weights():
    from refcompress.errors import ArgumentError

    w = np.linspace(-1, 1, 16).astype(np.float32)
    w[3] = np.nan
    with pytest.raises(ArgumentError, match="w: expected finite values"):
        Q.kmeans_share(w, 2)
    mask = np.ones(16, bool)
    mask[3] = False  # a weight the mask leaves out is not shared, whatever it holds
    assert np.isfinite(Q.kmeans_share(w, 2, mask=mask).codebook).all()
