"""Element-by-element comparisons that report the first mismatch (never a norm)."""

from __future__ import annotations

import numpy as np


def _first_mismatch(actual, expected, bad):
    idx = tuple(int(i) for i in np.argwhere(bad)[0])
    return (
        f"{int(bad.sum())} of {bad.size} elements differ; first at index {idx}: "
        f"got {actual[idx]!r}, expected {expected[idx]!r}"
    )


def assert_exact(actual, expected, *, what: str = "result") -> None:
    """Assert identical dtype, shape and values (NaN equal to NaN)."""
    actual = np.asarray(actual)
    expected = np.asarray(expected)
    if actual.dtype != expected.dtype:
        raise AssertionError(f"{what}: dtype {actual.dtype} != expected {expected.dtype}")
    if actual.shape != expected.shape:
        raise AssertionError(f"{what}: shape {actual.shape} != expected {expected.shape}")
    if actual.dtype.kind == "f":
        bad = ~((actual == expected) | (np.isnan(actual) & np.isnan(expected)))
    else:
        bad = actual != expected
    if np.any(bad):
        raise AssertionError(f"{what}: {_first_mismatch(actual, expected, bad)}")


def assert_bitwise_equal(actual, expected, *, what: str = "result") -> None:
    """Assert float arrays are identical bit for bit (distinguishes -0.0 from 0.0)."""
    actual = np.asarray(actual)
    expected = np.asarray(expected)
    assert_exact(actual, expected, what=what)
    if actual.dtype.kind == "f":
        ui = np.dtype(f"u{actual.dtype.itemsize}")
        bad = actual.view(ui) != expected.view(ui)
        if np.any(bad):
            raise AssertionError(f"{what} (bitwise): {_first_mismatch(actual, expected, bad)}")
