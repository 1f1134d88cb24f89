"""Observers: what each computes, per tensor and per channel."""

import numpy as np
import pytest

from refcompress import quant as Q
from refcompress.errors import ArgumentError, ShapeError

SYM = Q.QuantSpec(8)


def test_minmax_tracks_the_running_range():
    o = Q.MinMaxObserver(SYM)
    o.observe(np.array([-1.0, 2.0], np.float32)).observe(np.array([-3.0, 0.5], np.float32))
    assert o.range() == (-3.0, 2.0)
    assert o.qparams().scale == np.float32(3.0 / 127)


def test_moving_average_follows_pytorch_rule():
    o = Q.MovingAverageMinMaxObserver(SYM, averaging_constant=0.5)
    o.observe(np.array([-1.0, 1.0], np.float32)).observe(np.array([-3.0, 5.0], np.float32))
    np.testing.assert_allclose(o.range(), ([-2.0], [3.0]))


def test_per_channel_ranges():
    x = np.array([[1.0, -4.0], [2.0, 8.0], [-1.0, 0.5]], np.float32)  # channels on axis 1
    o = Q.MinMaxObserver(Q.QuantSpec(8, granularity="channel", axis=1)).observe(x)
    np.testing.assert_array_equal(o.range()[0], [-1.0, -4.0])
    np.testing.assert_allclose(o.qparams().scale, np.float32([2.0 / 127, 8.0 / 127]))


def test_percentile_clips_outliers():
    x = np.concatenate([np.linspace(-1, 1, 10000), [100.0]]).astype(np.float32)
    o = Q.PercentileObserver(SYM, percentile=99.0).observe(x)
    lo, hi = o.range()
    assert 0.9 < hi[0] < 1.0 and lo[0] == -hi[0]


def test_mse_never_worse_than_minmax_and_clips_heavy_tails():
    rng = np.random.default_rng(0)
    x = rng.standard_t(2, 20000).astype(np.float32)
    spec = Q.QuantSpec(4)
    mse = Q.MSEObserver(spec).observe(x).qparams()
    mm = Q.MinMaxObserver(spec).observe(x).qparams()
    err = lambda qp: float(np.mean((Q.dequantize(Q.quantize(x, qp), qp) - x) ** 2))  # noqa: E731
    assert err(mse) <= err(mm)
    assert mse.scale < mm.scale


def test_kl_threshold_is_inside_the_range_for_a_heavy_tailed_distribution():
    rng = np.random.default_rng(1)
    x = np.concatenate([rng.standard_normal(50000), [40.0, -35.0]]).astype(np.float32)
    o = Q.HistogramKLObserver(SYM, bins=1024).observe(x[:25000]).observe(x[25000:])
    t = o.range()[1][0]
    assert 2.0 < t < 20.0


def test_uncalibrated_and_bad_observers_are_refused():
    with pytest.raises(ArgumentError, match="calibration never ran"):
        Q.MinMaxObserver(SYM).qparams()
    with pytest.raises(ArgumentError, match="granularity"):
        Q.MinMaxObserver(Q.QuantSpec(4, granularity="group", group_size=2))
    with pytest.raises(ArgumentError, match="percentile"):
        Q.PercentileObserver(SYM, percentile=10)
    with pytest.raises(ArgumentError, match="symmetric"):
        Q.HistogramKLObserver(Q.QuantSpec(8, signed=False, symmetric=False))


@pytest.mark.parametrize("cls", [Q.MinMaxObserver, Q.MovingAverageMinMaxObserver, Q.PercentileObserver,
                                 Q.MSEObserver, Q.HistogramKLObserver])
def test_every_observer_refuses_a_changed_channel_count(cls):
    # the moving average broadcast a 1-channel batch over 4 channels, the histogram re-binned
    # part of its channels, Percentile / MSE failed inside numpy's concatenate
    o = cls(Q.QuantSpec(8).per_channel(1))
    o.observe(np.array([[1.0, 2, 3, 4]], np.float32))
    with pytest.raises(ShapeError, match="x: channel count changed from 4 to 1"):
        o.observe(np.array([[100.0]], np.float32))
    with pytest.raises(ShapeError, match="x: channel count changed from 4 to 5"):
        o.observe(np.ones((2, 5), np.float32))
    # the statistics of the accepted batch are untouched
    np.testing.assert_allclose(o.qparams().scale, np.float32([1, 2, 3, 4]) / 127, rtol=0.02)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_kl_observer_refuses_non_finite_values(bad):
    o = Q.HistogramKLObserver(SYM)
    with pytest.raises(ArgumentError, match="x: expected finite values"):
        o.observe(np.array([1.0, bad, 2.0], np.float32))
