"""Observers: collect statistics of activations during calibration, then choose qparams.

Observing is separate from computing parameters (as in PyTorch's observers): ``observe``
may be called on many batches; ``qparams()`` turns what was seen into a :class:`QParams`.
Each works per tensor or per channel (``spec.granularity == "channel"``, ``spec.axis``).

* :class:`MinMaxObserver`            - running min and max (exact range, outlier-sensitive).
* :class:`MovingAverageMinMaxObserver` - exponential moving average of per-batch min / max.
* :class:`PercentileObserver`        - clip at a percentile of |x| (or of x for affine).
* :class:`MSEObserver`               - the clipping ratio of the min-max range that
  minimises the quantization MSE on the observed values (grid search).
* :class:`HistogramKLObserver`       - TensorRT's entropy calibration: the clipping
  threshold minimising KL(P || Q) between the histogram and its quantized version
  (Migacz, "8-bit Inference with TensorRT", GTC 2017).
"""

from __future__ import annotations

import numpy as np

from .._validation import check_array, check_axis, check_float, check_int
from ..errors import ArgumentError, ShapeError
from .qparams import QParams, choose_qparams, dequantize, quantize
from .spec import QuantSpec


class Observer:
    """Base: validates batches and reduces them per tensor or per channel."""

    def __init__(self, spec: QuantSpec):
        if spec.granularity == "group":
            raise ArgumentError("spec.granularity: observers support 'tensor' and 'channel', got 'group'")
        self.spec = spec
        self.n_batches_ = 0

    def _rows(self, x) -> np.ndarray:
        """x as [channels, values] (channels = 1 per tensor), float64."""
        x = check_array(x, "x", dtypes=[np.float32, np.float64])
        if self.spec.granularity == "tensor":
            return x.reshape(1, -1).astype(np.float64)
        axis = check_axis(self.spec.axis, x.ndim, "spec.axis")
        return np.moveaxis(x, axis, 0).reshape(x.shape[axis], -1).astype(np.float64)

    def observe(self, x) -> "Observer":
        """Add batch ``x`` to the statistics; per channel, every batch must have the
        first one's channel count (ShapeError otherwise)."""
        rows = self._rows(x)
        # checked once here for every observer: a different count would broadcast (moving
        # average), re-bin part of a histogram or fail inside numpy's concatenate
        if self.n_batches_ and rows.shape[0] != self.n_channels_:
            raise ShapeError(f"x: channel count changed from {self.n_channels_} to {rows.shape[0]}")
        if rows.shape[1] == 0:
            return self
        self._update(rows)
        self.n_channels_ = rows.shape[0]
        self.n_batches_ += 1
        return self

    __call__ = observe

    def _check_ready(self):
        if self.n_batches_ == 0:
            raise ArgumentError(f"{type(self).__name__}: calibration never ran (observe() saw no data)")

    def _out(self, lo, hi) -> QParams:
        if self.spec.granularity == "tensor":
            lo, hi = lo[0], hi[0]
        return choose_qparams(lo, hi, self.spec)

    def qparams(self) -> QParams:
        self._check_ready()
        lo, hi = self.range()
        return self._out(lo, hi)


class MinMaxObserver(Observer):
    """Running minimum and maximum of everything observed."""

    def _update(self, rows):
        lo, hi = rows.min(axis=1), rows.max(axis=1)
        if self.n_batches_ == 0:
            self.min_, self.max_ = lo, hi
        else:
            self.min_, self.max_ = np.minimum(self.min_, lo), np.maximum(self.max_, hi)

    def range(self):
        return self.min_, self.max_


class MovingAverageMinMaxObserver(MinMaxObserver):
    """min / max as exponential moving averages: m <- m + c (batch_m - m) (PyTorch's rule)."""

    def __init__(self, spec: QuantSpec, averaging_constant: float = 0.01):
        super().__init__(spec)
        self.averaging_constant = check_float(averaging_constant, "averaging_constant",
                                              min_value=0.0, max_value=1.0, min_inclusive=False)

    def _update(self, rows):
        lo, hi = rows.min(axis=1), rows.max(axis=1)
        if self.n_batches_ == 0:
            self.min_, self.max_ = lo, hi
        else:
            c = self.averaging_constant
            self.min_ = self.min_ + c * (lo - self.min_)
            self.max_ = self.max_ + c * (hi - self.max_)


class _Sampling(Observer):
    """Keeps the observed values (per channel) for methods that need the distribution."""

    def _update(self, rows):
        self._values = rows if self.n_batches_ == 0 else np.concatenate([self._values, rows], axis=1)

    def _minmax(self):
        return self._values.min(axis=1), self._values.max(axis=1)


class PercentileObserver(_Sampling):
    """Clip at the given percentile: symmetric specs use percentile of |x|; affine specs
    the (100 - p) and p percentiles of x."""

    def __init__(self, spec: QuantSpec, percentile: float = 99.99):
        super().__init__(spec)
        self.percentile = check_float(percentile, "percentile", min_value=50.0, max_value=100.0)

    def range(self):
        v = self._values
        if self.spec.symmetric:
            a = np.percentile(np.abs(v), self.percentile, axis=1)
            return -a, a
        return np.percentile(v, 100 - self.percentile, axis=1), np.percentile(v, self.percentile, axis=1)


class MSEObserver(_Sampling):
    """Grid search over clipping ratios r in (0, 1] of the min-max range, keeping per
    channel the r that minimises mean((x - fake_quant(x))^2) on the observed values."""

    def __init__(self, spec: QuantSpec, n_grid: int = 50, min_ratio: float = 0.3):
        super().__init__(spec)
        self.n_grid = check_int(n_grid, "n_grid", min_value=2)
        self.min_ratio = check_float(min_ratio, "min_ratio", min_value=0.0, max_value=1.0, min_inclusive=False)

    def range(self):
        lo0, hi0 = self._minmax()
        best = np.full(lo0.shape, np.inf)
        best_lo, best_hi = lo0.copy(), hi0.copy()
        tensor_spec = QuantSpec(self.spec.bits, self.spec.signed, self.spec.symmetric, self.spec.narrow_range)
        for r in np.linspace(self.min_ratio, 1.0, self.n_grid):
            for c in range(lo0.size):
                qp = choose_qparams(lo0[c] * r, hi0[c] * r, tensor_spec)
                v = self._values[c].astype(np.float32)
                err = float(np.mean((dequantize(quantize(v, qp), qp) - v) ** 2))
                if err < best[c]:
                    best[c], best_lo[c], best_hi[c] = err, lo0[c] * r, hi0[c] * r
        return best_lo, best_hi


def _smooth(p, eps: float = 1e-4):
    """Give empty bins a little mass and renormalise (TensorRT's calibrator smooths too),
    so KL(P || Q) stays finite where Q has an empty bin under P's mass."""
    p = np.where(p == 0, eps, p)
    return p / p.sum()


class HistogramKLObserver(Observer):
    """TensorRT entropy calibration on a histogram of |x| (symmetric) with ``bins`` bins.

    For each candidate threshold i (in bins, from the number of quantization levels up to
    ``bins``): P = histogram[:i] with the outliers beyond i added to the last bin; Q = P
    merged into ``levels`` equal chunks and expanded back over the nonzero bins of each
    chunk; keep the i minimising KL(P || Q), both distributions smoothed so that empty bins
    do not make it infinite.  Range = [-t, t] with t = (i + 0.5) * width.
    """

    def __init__(self, spec: QuantSpec, bins: int = 2048):
        super().__init__(spec)
        if not spec.symmetric:
            raise ArgumentError("spec.symmetric: HistogramKLObserver calibrates symmetric ranges")
        self.bins = check_int(bins, "bins", min_value=16)

    def _update(self, rows):
        # NaN / Inf cannot be binned; the other observers refuse them too (their
        # statistics become non-finite, which choose_qparams refuses)
        check_array(rows, "x", finite=True)
        amax = np.abs(rows).max(axis=1)
        if self.n_batches_ == 0:
            self.amax_ = amax
            self.hist_ = np.zeros((rows.shape[0], self.bins))
        elif np.any(amax > self.amax_):
            # widen the range: re-bin the existing counts into the larger one
            new = np.maximum(amax, self.amax_)
            for c in range(rows.shape[0]):
                centers = (np.arange(self.bins) + 0.5) * self.amax_[c] / self.bins
                self.hist_[c] = np.histogram(centers, bins=self.bins, range=(0, new[c] or 1.0),
                                             weights=self.hist_[c])[0]
            self.amax_ = new
        for c in range(rows.shape[0]):
            self.hist_[c] += np.histogram(np.abs(rows[c]), bins=self.bins, range=(0, self.amax_[c] or 1.0))[0]

    def range(self):
        levels = self.spec.qmax + 1  # quantized magnitudes 0..qmax
        t = np.array([self._threshold(h, a, levels) for h, a in zip(self.hist_, self.amax_)])
        return -t, t

    def _threshold(self, hist, amax, levels):
        if amax == 0:
            return 0.0
        width = amax / self.bins
        best_i, best_kl = self.bins, np.inf
        for i in range(levels, self.bins + 1):
            p = hist[:i].copy()
            p[-1] += hist[i:].sum()
            chunks = np.array_split(hist[:i], levels)
            q = np.concatenate([
                np.where(ch > 0, ch.sum() / max(np.count_nonzero(ch), 1), 0.0) for ch in chunks
            ])
            ps, qs = p.sum(), q.sum()
            if ps == 0 or qs == 0:
                continue
            p, q = _smooth(p / ps), _smooth(q / qs)
            mask = p > 0
            kl = float(np.sum(p[mask] * np.log(p[mask] / q[mask])))
            if kl < best_kl:
                best_kl, best_i = kl, i
        return (best_i + 0.5) * width if best_i < self.bins else amax
