"""The digits data set: sizes, dtypes, the fixed stratified split, determinism."""

import numpy as np
import pytest

pytest.importorskip("sklearn")

from refcompress.data import SPLIT_FRACTIONS, SPLIT_SEED, Digits, load_digits, stratified_split
from refcompress.errors import DTypeError


@pytest.fixture(scope="module")
def digits():
    return load_digits()


def test_sizes_shapes_and_dtypes(digits):
    assert digits.sizes() == {"train": 1079, "val": 359, "test": 359}
    for X, y in ((digits.X_train, digits.y_train), (digits.X_val, digits.y_val),
                 (digits.X_test, digits.y_test)):
        assert X.dtype == np.float32 and X.shape[1:] == (1, 8, 8)
        assert y.dtype == np.int64 and y.shape == (len(X),)
        assert X.min() >= 0.0 and X.max() <= 1.0
    assert digits.X_train.max() == 1.0  # 16/16: scaled by the true maximum, not by the data
    assert digits.n_classes == 10 and digits.class_names == tuple("0123456789")
    assert digits.image_shape == (1, 8, 8) and digits.n_features == 64


def test_pixels_are_sklearn_pixels_over_16(digits):
    from sklearn.datasets import load_digits as sk

    raw = sk()
    rows = digits.indices["test"]
    np.testing.assert_array_equal(digits.X_test.reshape(-1, 64) * 16, raw.data[rows].astype(np.float32))
    np.testing.assert_array_equal(digits.y_test, raw.target[rows])


def test_flat_view_matches_images(digits):
    flat = load_digits(flat=True)
    assert flat.flat and not digits.flat
    assert flat.X_train.shape == (1079, 64)
    np.testing.assert_array_equal(flat.X_val, digits.X_val.reshape(-1, 64))
    np.testing.assert_array_equal(flat.as_images().X_test, digits.X_test)
    np.testing.assert_array_equal(digits.as_flat().X_test, flat.X_test)


def test_stratified_within_one_sample_per_class_per_split(digits):
    y_all = np.concatenate([digits.y_train, digits.y_val, digits.y_test])
    n_c = np.bincount(y_all, minlength=10)
    for split, y in (("train", digits.y_train), ("val", digits.y_val), ("test", digits.y_test)):
        counts = np.bincount(y, minlength=10)
        assert np.all(np.abs(counts - SPLIT_FRACTIONS[split] * n_c) <= 1.0), split


def test_splits_partition_the_data_without_overlap(digits):
    idx = digits.indices
    assert not set(idx["train"]) & set(idx["val"])
    assert not set(idx["train"]) & set(idx["test"])
    assert not set(idx["val"]) & set(idx["test"])
    np.testing.assert_array_equal(np.sort(np.concatenate(list(idx.values()))), np.arange(1797))


def test_split_is_fixed_and_independent_of_the_global_seed(digits):
    np.random.seed(123)
    from refcompress import nn

    nn.manual_seed(99)
    again = load_digits()
    for k in ("train", "val", "test"):
        np.testing.assert_array_equal(again.indices[k], digits.indices[k])
    np.testing.assert_array_equal(again.X_test, digits.X_test)


def test_stratified_split_rule_on_a_small_label_vector():
    y = np.array([0] * 10 + [1] * 5 + [2] * 3)
    parts = stratified_split(y, seed=SPLIT_SEED)
    # n_hold = floor(0.2 n + 0.5): 2 for 10, 1 for 5, 1 for 3 (0.6 + 0.5 = 1.1)
    assert [np.bincount(y[parts[k]], minlength=3).tolist() for k in ("train", "val", "test")] == [
        [6, 3, 1], [2, 1, 1], [2, 1, 1]]
    assert all(np.all(np.diff(v) > 0) for v in parts.values())
    other = stratified_split(y, seed=SPLIT_SEED + 1)
    assert any(not np.array_equal(parts[k], other[k]) for k in parts)


def test_arrays_are_read_only(digits):
    with pytest.raises(ValueError):
        digits.X_train[0, 0, 0, 0] = 5.0
    assert isinstance(digits, Digits)


@pytest.mark.parametrize("flat", [1, "yes", None])
def test_flat_must_be_bool(flat):
    with pytest.raises(DTypeError, match="flat"):
        load_digits(flat=flat)


def test_missing_sklearn_gives_install_hint(monkeypatch):
    import builtins

    from refcompress.data import digits as mod

    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name.startswith("sklearn"):
            raise ImportError("No module named 'sklearn'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    mod._cached_split.cache_clear()
    try:
        with pytest.raises(ImportError, match=r'pip install "refcompress\[demo\]"'):
            load_digits()
    finally:
        monkeypatch.undo()
        mod._cached_split.cache_clear()
