"""Batching: cut arrays into consecutive mini-batches, optionally in a shuffled order."""

from __future__ import annotations

import numbers

import numpy as np

from .._validation import check_array, check_int
from ..errors import ArgumentError, DTypeError, ShapeError

__all__ = ["iter_batches", "n_batches"]


def n_batches(n_samples: int, batch_size: int) -> int:
    """ceil(n_samples / batch_size): the number of batches :func:`iter_batches` yields."""
    n_samples = check_int(n_samples, "n_samples", min_value=0)
    batch_size = check_int(batch_size, "batch_size", min_value=1)
    return -(-n_samples // batch_size)


def _as_generator(rng):
    if isinstance(rng, np.random.Generator):
        return rng
    if isinstance(rng, numbers.Integral) and not isinstance(rng, bool):
        return np.random.default_rng(check_int(rng, "rng", min_value=0))
    raise DTypeError(
        f"rng: expected a numpy.random.Generator or a non-negative int seed, got {type(rng).__name__} {rng!r}")


def iter_batches(X, y=None, batch_size: int = 32, shuffle: bool = False, rng=None):
    """Yield ``(X_b, y_b)`` (or ``X_b`` when ``y`` is None) for consecutive batches.

    Batch b holds rows ``order[b*B : (b+1)*B]`` with B = ``batch_size`` and ``order`` the
    identity, or ``rng.permutation(N)`` when ``shuffle``; the last batch keeps the
    remaining ``N mod B`` rows (it is not dropped), so every row appears exactly once and
    there are ceil(N / B) batches.  Batches are C-contiguous arrays with X's and y's dtypes
    (views when not shuffled and X is contiguous, copies otherwise).

    X       : ndarray (N, ...), N >= 1.
    y       : ndarray (N, ...) or None.
    shuffle : bool; needs ``rng``, a ``numpy.random.Generator`` or an int seed (so a
              shuffled order is always reproducible; a Generator advances on every call).
    """
    X = check_array(X, "X", min_ndim=1)
    if len(X) == 0:
        raise ShapeError(f"X: expected at least one sample, got shape {X.shape}")
    if y is not None:
        y = check_array(y, "y", min_ndim=1)
        if len(y) != len(X):
            raise ShapeError(f"y: expected {len(X)} rows (one per row of X), got shape {y.shape}")
    batch_size = check_int(batch_size, "batch_size", min_value=1)
    if not isinstance(shuffle, (bool, np.bool_)):
        raise DTypeError(f"shuffle: expected a bool, got {type(shuffle).__name__} {shuffle!r}")
    if shuffle:
        if rng is None:
            raise ArgumentError("rng: shuffle=True needs a numpy.random.Generator or an int seed, got None")
        order = _as_generator(rng).permutation(len(X))
    elif rng is not None:
        _as_generator(rng)
    # Validation happens above, eagerly; the generator below only slices.
    return _generate(X, y, batch_size, order if shuffle else None)


def _generate(X, y, batch_size, order):
    n = len(X)
    for start in range(0, n, batch_size):
        if order is None:
            sl = slice(start, start + batch_size)
            xb = np.ascontiguousarray(X[sl])
            yb = None if y is None else np.ascontiguousarray(y[sl])
        else:
            idx = order[start:start + batch_size]
            xb = X[idx]
            yb = None if y is None else y[idx]
        yield xb if y is None else (xb, yb)
