"""W8A8Linear: the three activation modes against float, SmoothQuant's identity, bad input."""

import numpy as np
import pytest

import refcompress.kernels as kernels
from refcompress.errors import ArgumentError, ShapeError
from refcompress.quant.w8a8 import W8A8Linear
from refcompress.testing import kernel_variants


def _layer_data(seed=0, outliers=True):
    rng = np.random.default_rng(seed)
    w = rng.normal(0, 0.05, (24, 40)).astype(np.float32)
    b = rng.normal(0, 0.1, 24).astype(np.float32)
    x = rng.normal(0, 1, (3, 50, 40)).astype(np.float32)
    if outliers:
        x[..., [3, 17]] *= 40.0  # transformer-like outlier channels
    return w, b, x


def _rel_err(y, ref):
    return float(np.linalg.norm(y - ref) / np.linalg.norm(ref))


@pytest.mark.parametrize("mode", ["static", "tensor", "token"])
def test_modes_track_float_and_keep_shape(mode):
    w, b, x = _layer_data(outliers=False)
    ref = x @ w.T + b
    layer = W8A8Linear.from_float(w, b, activation=mode, calibration=x)
    y = layer(x)
    assert y.shape == ref.shape and y.dtype == np.float32
    assert _rel_err(y, ref) < 0.02


def test_forward_is_the_documented_integer_product():
    """static mode, exactly: float32(acc) * (s_a s_w) + b with acc the int32 product."""
    w, b, x = _layer_data(1)
    m = np.abs(x).reshape(-1, 40).max(0) ** 0.5
    layer = W8A8Linear.from_float(w, b, activation="static", smooth=m, calibration=x)
    x2 = x.reshape(-1, 40)
    s_a, z = np.float32(layer.input_scale), int(layer.input_zero_point)
    q = kernels.quantize(x2, (s_a * layer.smooth).astype(np.float32), np.full(40, z, np.int32), axis=1, dtype=np.uint8)
    acc = (q.astype(np.int64) - z) @ layer.weight_q.astype(np.int64).T
    scale = (np.float64(s_a) * layer.weight_scale.astype(np.float64)).astype(np.float32)
    want = acc.astype(np.float32) * scale + b
    # every variant that both ops of the layer have (qgemm's own variants, VNNI included,
    # are property-tested in tests/kernels)
    both = [(b_, i) for b_, i in kernel_variants("qgemm") if i is None or i in kernels.variants("quantize")]
    for backend, isa in both:
        with kernels.use(backend, isa=isa):
            np.testing.assert_array_equal(layer(x).reshape(-1, 24), want, err_msg=f"{backend} {isa}")


@pytest.mark.parametrize("smoothed", [False, True])
def test_token_forward_is_the_documented_integer_product(smoothed):
    """token mode, exactly: xs = x * float32(1/m), s_i = max|xs_i| / 127 (1 for a zero
    row), q = quantize(xs, s, axis=0) in [-127, 127], then
    (float32(acc) * s_w[n]) * s_i + b with acc the int32 product."""
    w, b, x = _layer_data(3)
    x[1, 7] = 0.0  # an all-zero token
    m = np.abs(x).reshape(-1, 40).max(0) ** 0.5 if smoothed else None
    layer = W8A8Linear.from_float(w, b, activation="token", smooth=m)
    x2 = x.reshape(-1, 40)
    xs = x2 * (np.float32(1) / layer.smooth).astype(np.float32) if smoothed else x2
    amax = np.abs(xs).max(axis=1)
    s_i = np.where(amax > 0, amax / np.float32(127), np.float32(1)).astype(np.float32)
    assert s_i[57] == 1.0  # the zero row (3 * 50 rows; [1, 7] is row 57)
    with kernels.use("numpy"):
        q = kernels.quantize(xs, s_i, 0, axis=0, dtype=np.int8, qmin=-127, qmax=127)
    acc = q.astype(np.int64) @ layer.weight_q.astype(np.int64).T
    want = (acc.astype(np.float32) * layer.weight_scale) * s_i[:, None] + b
    both = [(b_, i) for b_, i in kernel_variants("qgemm") if i is None or i in kernels.variants("quantize_rows")]
    for backend, isa in both:
        with kernels.use(backend, isa=isa):
            np.testing.assert_array_equal(layer(x).reshape(-1, 24), want, err_msg=f"{backend} {isa}")


def test_token_mode_refuses_non_finite_tokens_naming_the_row():
    w, b, x = _layer_data()
    layer = W8A8Linear.from_float(w, b, activation="token")
    x = x.copy()
    x[0, 9, 3] = np.nan
    with pytest.raises(ArgumentError, match="x: expected finite values, got NaN or Inf in row 9"):
        layer(x)


def test_smoothquant_helps_per_tensor_activations_with_outliers():
    w, b, x = _layer_data(2)
    ref = x @ w.T + b
    plain = W8A8Linear.from_float(w, b, activation="static", calibration=x)
    amax_x = np.abs(x).reshape(-1, 40).max(0)
    amax_w = np.abs(w).max(0)
    m = np.sqrt(amax_x) / np.sqrt(amax_w)  # alpha = 0.5
    smooth = W8A8Linear.from_float(w, b, activation="static", smooth=m, calibration=x)
    assert _rel_err(smooth(x), ref) < 0.5 * _rel_err(plain(x), ref)
    # the float weight the layer applies is W (up to weight rounding), whatever m is
    np.testing.assert_allclose(smooth.dense_weight(), w, atol=float(np.abs(w * m).max() / m.min()) / 254 + 1e-7)


def test_bad_input_names_the_argument():
    w, b, x = _layer_data()
    with pytest.raises(ArgumentError, match="calibration"):
        W8A8Linear.from_float(w, b, activation="static")
    with pytest.raises(ArgumentError, match="activation"):
        W8A8Linear.from_float(w, b, activation="per-channel")
    with pytest.raises(ArgumentError, match="smooth"):
        W8A8Linear.from_float(w, b, activation="token", smooth=-np.ones(40))
    layer = W8A8Linear.from_float(w, b, activation="token")
    with pytest.raises(ShapeError, match="x: expected last dimension 40"):
        layer(x[..., :39])


def test_a_smoothing_factor_whose_reciprocal_overflows_is_refused_without_a_stray_warning():
    import warnings

    rng = np.random.default_rng(3)
    layer = W8A8Linear.from_float(rng.standard_normal((3, 4)).astype(np.float32), None, activation="token")
    layer.smooth = np.array([1e-39, 1, 1, 1], np.float32)  # float32(1 / m) is inf
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the clear error, not NumPy's overflow warning first
        with pytest.raises(ArgumentError, match="smooth: expected factors whose float32 reciprocal is finite"):
            layer(np.ones((2, 4), np.float32))
