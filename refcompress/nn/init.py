"""Random number source and PyTorch's default initialisation.

Every layer constructor takes ``rng=None``: an explicit ``numpy.random.Generator`` or, when
None, this module's shared generator.  :func:`manual_seed` replaces the shared generator,
so ``manual_seed(s)`` followed by building and training a model is reproducible.  The
shared generator starts as ``default_rng(0)``: a fresh process is reproducible too.

PyTorch's default for Linear and Conv2d (``kaiming_uniform_(w, a=sqrt(5))`` and a uniform
bias) is, with fan_in = in_features or in_channels/groups * KH * KW,

    gain  = sqrt(2 / (1 + a^2))              (a = sqrt(5)  ->  gain = sqrt(1/3))
    bound = gain * sqrt(3 / fan_in)          (= 1 / sqrt(fan_in) for a = sqrt(5))
    w ~ U(-bound, bound),   b ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in))

drawn here in float64 and stored as float32 (the values differ from PyTorch's, which uses
its own generator; the distribution is the same).
"""

from __future__ import annotations

import math

import numpy as np

from .._validation import check_int
from ..errors import DTypeError

__all__ = ["manual_seed", "get_rng", "kaiming_uniform", "uniform_bias"]

_generator = np.random.default_rng(0)


def manual_seed(seed: int) -> np.random.Generator:
    """Reset the shared generator to ``numpy.random.default_rng(seed)`` and return it."""
    global _generator
    _generator = np.random.default_rng(check_int(seed, "seed", min_value=0))
    return _generator


def get_rng(rng=None) -> np.random.Generator:
    """``rng`` itself if it is a Generator; the shared generator if it is None."""
    if rng is None:
        return _generator
    if not isinstance(rng, np.random.Generator):
        raise DTypeError(f"rng: expected a numpy.random.Generator or None, got {type(rng).__name__}")
    return rng


def kaiming_uniform(shape, fan_in: int, a: float = math.sqrt(5.0), rng=None,
                    dtype=np.float32) -> np.ndarray:
    """U(-b, b) with b = sqrt(2 / (1 + a^2)) * sqrt(3 / fan_in) (He et al. 2015, uniform)."""
    bound = math.sqrt(2.0 / (1.0 + a * a)) * math.sqrt(3.0 / fan_in)
    return get_rng(rng).uniform(-bound, bound, size=shape).astype(dtype)


def uniform_bias(shape, fan_in: int, rng=None, dtype=np.float32) -> np.ndarray:
    """U(-1/sqrt(fan_in), 1/sqrt(fan_in)), PyTorch's default bias."""
    bound = 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0
    return get_rng(rng).uniform(-bound, bound, size=shape).astype(dtype)
