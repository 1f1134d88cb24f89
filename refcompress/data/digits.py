"""The embedded default data set: scikit-learn's handwritten digits, with one fixed split.

scikit-learn ships the 1,797 8x8 digit images (UCI "Optical Recognition of Handwritten
Digits", test part) inside its wheel, so nothing is downloaded.  Pixels are integers 0..16;
here they become float32 ``x / 16`` in [0, 1].

The split is stratified and fixed: for each class c with n_c images, the images are put in
the order of ``numpy.random.default_rng(SPLIT_SEED).permutation`` (one generator, classes
visited 0..9), and

    n_val(c) = n_test(c) = floor(0.2 * n_c + 0.5),   n_train(c) = n_c - 2 * n_val(c)

go to validation, test and training in that order.  Each split therefore holds every
class within one sample of 60 / 20 / 20 percent of that class.  The split never depends on
a user's seed: every run, every seed and every machine sees the same test set (1,079 /
359 / 359 images).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field, replace

import numpy as np

from ..errors import DTypeError

__all__ = ["Digits", "load_digits", "stratified_split", "SPLIT_SEED", "SPLIT_FRACTIONS"]

SPLIT_SEED = 20_240_617
SPLIT_FRACTIONS = {"train": 0.6, "val": 0.2, "test": 0.2}

_INSTALL_HINT = (
    "refcompress.data.load_digits needs scikit-learn, which ships the digits images; "
    'install it with: pip install "refcompress[demo]"'
)


@dataclass(frozen=True)
class Digits:
    """The digits data, split.  Arrays are read-only views of one cached copy.

    X_* : float32, shape (N, 1, 8, 8) (NCHW), or (N, 64) when loaded with ``flat=True``;
          values in [0, 1].
    y_* : int64, shape (N,), class indices 0..9.
    indices     : {"train", "val", "test"} -> int64 row numbers into scikit-learn's
                  ``load_digits()`` arrays (sorted), for tracing a sample to its source.
    class_names : ("0", ..., "9"); ``image_shape`` (1, 8, 8); ``n_features`` 64.
    """

    X_train: np.ndarray
    y_train: np.ndarray
    X_val: np.ndarray
    y_val: np.ndarray
    X_test: np.ndarray
    y_test: np.ndarray
    indices: dict = field(repr=False)
    class_names: tuple = tuple(str(d) for d in range(10))
    image_shape: tuple = (1, 8, 8)
    n_features: int = 64

    @property
    def n_classes(self) -> int:
        return len(self.class_names)

    @property
    def flat(self) -> bool:
        """True when the X arrays are (N, 64) rows rather than (N, 1, 8, 8) images."""
        return self.X_train.ndim == 2

    def as_flat(self) -> "Digits":
        """The same data with X arrays viewed as (N, 64) rows (row-major pixel order)."""
        return replace(self, **{k: _readonly(getattr(self, k).reshape(len(getattr(self, k)), -1))
                                for k in ("X_train", "X_val", "X_test")})

    def as_images(self) -> "Digits":
        """The same data with X arrays viewed as (N, 1, 8, 8) images."""
        return replace(self, **{k: _readonly(getattr(self, k).reshape(-1, *self.image_shape))
                                for k in ("X_train", "X_val", "X_test")})

    def sizes(self) -> dict:
        """{"train": N_train, "val": N_val, "test": N_test}."""
        return {"train": len(self.y_train), "val": len(self.y_val), "test": len(self.y_test)}


def _readonly(a: np.ndarray) -> np.ndarray:
    a = a.view()
    a.flags.writeable = False
    return a


def _import_sklearn_digits():
    try:
        from sklearn.datasets import load_digits as sk_load_digits
    except ImportError as e:
        raise ImportError(_INSTALL_HINT) from e
    return sk_load_digits


def stratified_split(y: np.ndarray, seed: int = SPLIT_SEED) -> dict:
    """Row indices {"train", "val", "test"} of the fixed stratified 60/20/20 split of ``y``
    (the rule of the module docstring); each array is sorted, int64, and they partition
    ``range(len(y))``."""
    rng = np.random.default_rng(seed)
    parts = {"train": [], "val": [], "test": []}
    for c in np.unique(y):
        members = rng.permutation(np.flatnonzero(y == c))
        n_hold = int(np.floor(SPLIT_FRACTIONS["val"] * len(members) + 0.5))
        parts["val"].append(members[:n_hold])
        parts["test"].append(members[n_hold:2 * n_hold])
        parts["train"].append(members[2 * n_hold:])
    return {k: np.sort(np.concatenate(v)).astype(np.int64) for k, v in parts.items()}


@functools.lru_cache(maxsize=1)
def _cached_split():
    # scikit-learn's import costs about a second; the arrays are small, so one read-only
    # copy serves every call.
    raw = _import_sklearn_digits()()
    X = (np.asarray(raw.images, dtype=np.float64) / 16.0).astype(np.float32)
    X = X.reshape(-1, 1, 8, 8)
    y = np.asarray(raw.target, dtype=np.int64)
    idx = stratified_split(y)
    arrays = {}
    for k, rows in idx.items():
        arrays[f"X_{k}"] = _readonly(np.ascontiguousarray(X[rows]))
        arrays[f"y_{k}"] = _readonly(np.ascontiguousarray(y[rows]))
    return arrays, {k: _readonly(v) for k, v in idx.items()}


def load_digits(flat: bool = False) -> Digits:
    """Load the 1,797 digits with the fixed stratified 60/20/20 split (see module docstring).

    flat : False gives X arrays of shape (N, 1, 8, 8) (for convolutions), True gives the
           (N, 64) row view (for dense layers); both are float32 in [0, 1].
    Labels are int64 (N,).  The arrays are read-only (copy them to modify).  Raises
    ImportError with the install command when scikit-learn is missing.
    """
    if not isinstance(flat, (bool, np.bool_)):
        raise DTypeError(f"flat: expected a bool, got {type(flat).__name__} {flat!r}")
    arrays, idx = _cached_split()
    data = Digits(**arrays, indices=dict(idx))
    return data.as_flat() if flat else data
