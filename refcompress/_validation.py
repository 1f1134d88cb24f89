"""Input validation shared by every public function (validate once, at the boundary).

Messages follow one pattern: the argument's name, what came, and what was expected, e.g.
``x: expected dtype float32, got float64``.  Nothing here silently changes values: arrays
are only made contiguous (which never changes a result), never cast.
"""

from __future__ import annotations

import numbers
from typing import Iterable

import numpy as np

from .errors import ArgumentError, DTypeError, ShapeError

__all__ = [
    "check_array",
    "check_int",
    "check_float",
    "check_choice",
    "check_axis",
]


def _dtype_names(dtypes: Iterable[np.dtype]) -> str:
    return ", ".join(np.dtype(d).name for d in dtypes)


def check_array(
    x,
    name: str,
    *,
    dtypes=None,
    ndim=None,
    min_ndim: int | None = None,
    shape=None,
    contiguous: bool = False,
    finite: bool = False,
) -> np.ndarray:
    """Return ``x`` as an ndarray after checking it, or raise an error naming ``name``.

    dtypes     : iterable of accepted dtypes (exact match; no casting is done), or None.
    ndim       : an int or a tuple of accepted ranks, or None.
    min_ndim   : smallest accepted rank, or None.
    shape      : a tuple whose entries are ints or None (None = any size), or None.
    contiguous : return a C-contiguous array (a copy only if needed; values unchanged).
    finite     : refuse NaN and +-Inf.
    """
    if not isinstance(x, np.ndarray):
        if isinstance(x, (list, tuple, numbers.Number, np.generic)):
            x = np.asarray(x)
        else:
            raise DTypeError(f"{name}: expected a numpy.ndarray, got {type(x).__name__}")
    if dtypes is not None:
        accepted = tuple(np.dtype(d) for d in dtypes)
        if x.dtype not in accepted:
            raise DTypeError(
                f"{name}: expected dtype {_dtype_names(accepted)}, got {x.dtype.name}"
            )
    if ndim is not None:
        ranks = (ndim,) if isinstance(ndim, int) else tuple(ndim)
        if x.ndim not in ranks:
            want = " or ".join(str(r) for r in ranks)
            raise ShapeError(f"{name}: expected a {want}-D array, got shape {x.shape}")
    if min_ndim is not None and x.ndim < min_ndim:
        raise ShapeError(f"{name}: expected at least {min_ndim} dimensions, got shape {x.shape}")
    if shape is not None:
        ok = len(shape) == x.ndim and all(s is None or s == d for s, d in zip(shape, x.shape))
        if not ok:
            want = "(" + ", ".join("*" if s is None else str(s) for s in shape) + ")"
            raise ShapeError(f"{name}: expected shape {want}, got {x.shape}")
    if finite and x.dtype.kind in "fc" and not np.all(np.isfinite(x)):
        raise ArgumentError(f"{name}: expected finite values, got NaN or Inf")
    if contiguous:
        x = np.ascontiguousarray(x)
    return x


def check_int(value, name: str, *, min_value=None, max_value=None) -> int:
    """Return ``value`` as a Python int in [min_value, max_value] or raise naming ``name``."""
    # a plain int skips the abstract-class check (slow next to a small kernel call)
    if type(value) is not int:
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise DTypeError(f"{name}: expected an integer, got {type(value).__name__} {value!r}")
        value = int(value)
    if (min_value is not None and value < min_value) or (
        max_value is not None and value > max_value
    ):
        lo = "-inf" if min_value is None else min_value
        hi = "inf" if max_value is None else max_value
        raise ArgumentError(f"{name}: expected an integer in [{lo}, {hi}], got {value}")
    return value


def check_float(
    value,
    name: str,
    *,
    min_value=None,
    max_value=None,
    min_inclusive: bool = True,
    max_inclusive: bool = True,
) -> float:
    """Return ``value`` as a finite Python float within the given bounds, or raise."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise DTypeError(f"{name}: expected a real number, got {type(value).__name__} {value!r}")
    value = float(value)
    if not np.isfinite(value):
        raise ArgumentError(f"{name}: expected a finite number, got {value}")
    lo_bad = min_value is not None and (value < min_value if min_inclusive else value <= min_value)
    hi_bad = max_value is not None and (value > max_value if max_inclusive else value >= max_value)
    if lo_bad or hi_bad:
        lo = "(-inf" if min_value is None else ("[" if min_inclusive else "(") + str(min_value)
        hi = "inf)" if max_value is None else str(max_value) + ("]" if max_inclusive else ")")
        raise ArgumentError(f"{name}: expected a number in {lo}, {hi}, got {value}")
    return value


def check_choice(value, name: str, choices) -> object:
    """Return ``value`` if it is one of ``choices``, else raise naming ``name``."""
    if value not in choices:
        opts = ", ".join(repr(c) for c in choices)
        raise ArgumentError(f"{name}: expected one of {opts}, got {value!r}")
    return value


def check_axis(axis, ndim: int, name: str = "axis") -> int:
    """Return ``axis`` normalised to [0, ndim) (negative counts from the end), or raise."""
    if isinstance(axis, bool) or not isinstance(axis, numbers.Integral):
        raise DTypeError(f"{name}: expected an integer axis, got {type(axis).__name__} {axis!r}")
    axis = int(axis)
    if not -ndim <= axis < ndim:
        raise ArgumentError(f"{name}: expected an axis in [{-ndim}, {ndim - 1}], got {axis}")
    return axis % ndim
