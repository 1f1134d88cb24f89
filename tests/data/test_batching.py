"""iter_batches: coverage, order, last partial batch, determinism, bad arguments."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from refcompress.data import iter_batches, n_batches
from refcompress.errors import ArgumentError, DTypeError, ShapeError


def _data(n):
    X = np.arange(n * 3, dtype=np.float32).reshape(n, 3)
    return X, np.arange(n, dtype=np.int64)


def test_consecutive_batches_keep_the_last_partial_one():
    X, y = _data(10)
    batches = list(iter_batches(X, y, batch_size=4))
    assert [len(b[1]) for b in batches] == [4, 4, 2]
    np.testing.assert_array_equal(np.concatenate([b[0] for b in batches]), X)
    np.testing.assert_array_equal(np.concatenate([b[1] for b in batches]), y)
    assert all(b[0].flags.c_contiguous and b[1].flags.c_contiguous for b in batches)
    assert all(b[0].dtype == np.float32 and b[1].dtype == np.int64 for b in batches)


def test_without_labels_yields_arrays():
    X, _ = _data(5)
    out = list(iter_batches(X, batch_size=2))
    assert [b.shape for b in out] == [(2, 3), (2, 3), (1, 3)]


def test_non_contiguous_input_gives_contiguous_batches():
    X = np.arange(40, dtype=np.float32).reshape(10, 4)[:, ::2]
    for b in iter_batches(X, batch_size=3):
        assert b.flags.c_contiguous


@given(n=st.integers(1, 60), batch_size=st.integers(1, 70), seed=st.integers(0, 2**32 - 1))
def test_shuffled_batches_are_a_permutation(n, batch_size, seed):
    X, y = _data(n)
    batches = list(iter_batches(X, y, batch_size, shuffle=True, rng=seed))
    assert len(batches) == n_batches(n, batch_size) == -(-n // batch_size)
    assert all(len(b[1]) == batch_size for b in batches[:-1])
    ys = np.concatenate([b[1] for b in batches])
    np.testing.assert_array_equal(np.sort(ys), y)
    # rows travel together with their labels
    np.testing.assert_array_equal(np.concatenate([b[0] for b in batches]), X[ys])


def test_shuffle_is_deterministic_per_seed_and_generator():
    X, y = _data(50)
    a = [b[1] for b in iter_batches(X, y, 8, shuffle=True, rng=7)]
    b = [b[1] for b in iter_batches(X, y, 8, shuffle=True, rng=7)]
    c = [b[1] for b in iter_batches(X, y, 8, shuffle=True, rng=np.random.default_rng(7))]
    d = [b[1] for b in iter_batches(X, y, 8, shuffle=True, rng=8)]
    assert all(np.array_equal(u, v) for u, v in zip(a, b))
    assert all(np.array_equal(u, v) for u, v in zip(a, c))
    assert not all(np.array_equal(u, v) for u, v in zip(a, d))
    assert not np.array_equal(np.concatenate(a), y)


def test_bad_arguments_are_reported_eagerly():
    X, y = _data(6)
    with pytest.raises(ArgumentError, match="batch_size"):
        iter_batches(X, y, batch_size=0)
    with pytest.raises(DTypeError, match="batch_size"):
        iter_batches(X, y, batch_size=2.0)
    with pytest.raises(ShapeError, match="y"):
        iter_batches(X, y[:5], batch_size=2)
    with pytest.raises(ShapeError, match="X"):
        iter_batches(X[:0], y[:0], batch_size=2)
    with pytest.raises(ArgumentError, match="rng"):
        iter_batches(X, y, 2, shuffle=True)
    with pytest.raises(DTypeError, match="rng"):
        iter_batches(X, y, 2, shuffle=True, rng="seed")
    with pytest.raises(ArgumentError, match="rng"):
        iter_batches(X, y, 2, shuffle=True, rng=-1)
    with pytest.raises(DTypeError, match="shuffle"):
        iter_batches(X, y, 2, shuffle="yes", rng=0)
    with pytest.raises(DTypeError, match="X"):
        iter_batches("not an array", None, 2)
    with pytest.raises(ArgumentError, match="batch_size"):
        n_batches(5, 0)
