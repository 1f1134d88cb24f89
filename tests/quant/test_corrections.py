"""Cross-layer equalization, bias correction and AdaRound on single layers."""

import numpy as np
import pytest

from refcompress import quant as Q
from refcompress.errors import ShapeError


def _mlp(w1, b1, w2, x):
    return w2 @ np.maximum(w1 @ x + b1[:, None], 0)


def test_equalization_preserves_the_function_and_equalizes_ranges():
    rng = np.random.default_rng(0)
    w1 = rng.standard_normal((6, 5)) * np.array([10, 0.1, 1, 5, 0.5, 2])[:, None]
    b1 = rng.standard_normal(6)
    w2 = rng.standard_normal((3, 6))
    x = rng.standard_normal((5, 40))
    w1n, b1n, w2n, s = Q.equalize_pair(w1, b1, w2)
    np.testing.assert_allclose(_mlp(w1n, b1n, w2n, x), _mlp(w1, b1, w2, x), rtol=1e-12, atol=1e-12)
    r1 = np.abs(w1n).max(axis=1)
    r2 = np.abs(w2n).max(axis=0)
    np.testing.assert_allclose(r1, r2, rtol=1e-12)


def test_equalization_of_conv_weights_and_zero_channels():
    rng = np.random.default_rng(1)
    w1 = rng.standard_normal((4, 3, 3, 3))
    w1[2] = 0
    w2 = rng.standard_normal((5, 4, 1, 1))
    s = Q.equalization_scales(w1, w2)
    assert s[2] == 1.0 and np.all(s > 0)
    with pytest.raises(ShapeError, match="w1, w2"):
        Q.equalization_scales(w1, w2[:, :3])


def test_bias_correction_restores_the_mean_output():
    rng = np.random.default_rng(2)
    w = rng.standard_normal((8, 16))
    x = rng.standard_normal((16, 5000)) + 1.5  # a nonzero mean makes the shift visible
    qp = Q.calibrate(w.astype(np.float32), Q.QuantSpec(3))
    wq = Q.dequantize(Q.quantize(w.astype(np.float32), qp), qp).astype(np.float64)
    corr = Q.bias_correction(w, wq, x.mean(axis=1))
    before = (wq @ x - w @ x).mean(axis=1)
    after = (wq @ x + corr[:, None] - w @ x).mean(axis=1)
    assert np.abs(after).max() < 1e-9 < np.abs(before).max()


def test_adaround_is_on_the_grid_and_beats_nearest_rounding():
    rng = np.random.default_rng(3)
    w = rng.standard_normal((16, 32))
    mix = rng.standard_normal((32, 32))
    x = mix @ rng.standard_normal((32, 512))  # correlated inputs: where rounding choices interact
    spec = Q.QuantSpec(4, granularity="channel")
    qp = Q.calibrate(w.astype(np.float32), spec)
    s = qp.scale.astype(np.float64)
    codes = Q.adaround(w, x, s, qmin=spec.qmin, qmax=spec.qmax, iters=400, lr=0.05)
    lo = np.floor(w / s[:, None])
    assert np.all((codes == lo) | (codes == lo + 1) | (codes == spec.qmin) | (codes == spec.qmax))
    nearest = np.clip(np.rint(w / s[:, None]), spec.qmin, spec.qmax)
    err = lambda c: float(np.sum(((s[:, None] * c) @ x - w @ x) ** 2))  # noqa: E731
    assert err(codes) < 0.9 * err(nearest)


def test_model_bias_correction_uses_the_float_models_input_means():
    # a chain of two Linears, inputs with mean 3: with every layer's E[x] from the float
    # model the corrected model's output mean is the float one's (the old code took the
    # second layer's E[x] from float weights plus the corrected bias: off by ~0.04)
    from refcompress import nn

    nn.manual_seed(0)
    m = nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 4)).eval()
    x = (np.random.default_rng(0).standard_normal((512, 8)) + 3).astype(np.float32)
    qm = Q.quantize_weights_corrected(m, x, 3, bias_correction=True)
    np.testing.assert_allclose(qm(x).mean(0), m(x).mean(0), rtol=0, atol=1e-5)
    plain = Q.quantize_weights_corrected(m, x, 3)
    assert np.abs(plain(x).mean(0) - m(x).mean(0)).max() > 1e-2  # the correction has work to do


@pytest.mark.parametrize("groups", [2, 4])
def test_model_corrections_on_grouped_and_depthwise_convs(groups):
    # each group is its own layer: AdaRound on the group's input columns, bias correction
    # with the group's input-channel means (both failed on internal shape checks before)
    from refcompress import nn

    nn.manual_seed(1)
    m = nn.Sequential(nn.Conv2d(4, 4, 3, groups=groups)).eval()
    x = (np.random.default_rng(0).standard_normal((8, 4, 6, 6)) + np.arange(1, 5)[:, None, None]).astype(np.float32)
    bc = Q.quantize_weights_corrected(m, x, 3, bias_correction=True)
    # the same layer as a dense conv whose weights outside the groups are 0 (same per-tensor
    # grid; a 0 weight has no error): its correction, computed as it always was, is ours
    dense = nn.Sequential(nn.Conv2d(4, 4, 3)).eval()
    wd = np.zeros((4, 4, 3, 3), np.float32)
    o, c = 4 // groups, 4 // groups
    for g in range(groups):
        wd[g * o:(g + 1) * o, g * c:(g + 1) * c] = m[0].weight.data[g * o:(g + 1) * o]
    dense[0].weight.data, dense[0].bias.data = wd, m[0].bias.data.copy()
    bd = Q.quantize_weights_corrected(dense, x, 3, bias_correction=True)
    np.testing.assert_allclose(bc[0].bias.data, bd[0].bias.data, rtol=1e-6)
    np.testing.assert_allclose(bc(x), bd(x), rtol=1e-5, atol=1e-5)
    # and it moves the mean output towards the float one
    gap = lambda q: np.abs(q(x).mean(axis=(0, 2, 3)) - m(x).mean(axis=(0, 2, 3))).max()  # noqa: E731
    near = Q.quantize_weights_corrected(m, x, 3)
    assert gap(bc) < gap(near)
    ada = Q.quantize_weights_corrected(m, x, 3, adaround=True, adaround_iters=200)
    w, wa, wn = m[0].weight.data, ada[0].weight.data, near[0].weight.data
    s = np.abs(w).max() / 3  # per-tensor 3-bit grid
    np.testing.assert_allclose(wa / s, np.rint(wa / s), atol=1e-4)
    assert np.all(np.abs(wa - w) < s * (1 + 1e-4))  # floor or ceil of w / s
    err = lambda q: float(np.mean((q(x) - m(x)) ** 2))  # noqa: E731
    assert err(ada) <= err(near)


def test_adaround_refuses_bad_arguments():
    from refcompress.errors import ArgumentError

    rng = np.random.default_rng(4)
    w, x = rng.standard_normal((3, 5)), rng.standard_normal((5, 20))
    ok = dict(qmin=-7, qmax=7, iters=2)
    for scale, err, match in ((0.0, ArgumentError, "scale: expected positive"),
                              (np.array([0.1, -0.1, 0.1]), ArgumentError, "scale: expected positive"),
                              (np.nan, ArgumentError, "scale: expected finite"),
                              (np.full(4, 0.1), ShapeError, "scale: expected one scale per output row")):
        with pytest.raises(err, match=match):
            Q.adaround(w, x, scale, **ok)
    with pytest.raises(ArgumentError, match="qmin, qmax: expected qmin <= qmax"):
        Q.adaround(w, x, 0.1, qmin=7, qmax=-7, iters=2)
    for beta in ((20.0,), (20.0, 0.0), (np.inf, 2.0)):
        with pytest.raises(ArgumentError, match="beta"):
            Q.adaround(w, x, 0.1, beta=beta, **ok)
    with pytest.raises(ArgumentError, match="x: expected at least one sample"):
        Q.adaround(w, x[:, :0], 0.1, **ok)
    assert Q.adaround(w, x, np.full(3, 0.1), **ok).shape == (3, 5)
