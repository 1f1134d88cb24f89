"""Synthetic calibration problems for layer-wise compression methods (GPTQ, AWQ, SmoothQuant,
SparseGPT, Wanda and your own): a Linear weight and inputs shaped like a transformer's."""

from __future__ import annotations

import numpy as np

__all__ = ["OUTLIER_CHANNELS", "outlier_layer"]

#: Input channel -> scale factor: the few 20-50x channels transformer activations show.
OUTLIER_CHANNELS = {3: 20.0, 17: 35.0, 40: 50.0, 77: 25.0}


def outlier_layer(seed: int = 0, out: int = 64, n_in: int = 96, n: int = 512):
    """(W float32 [out, n_in], X float32 [n, n_in]): W ~ N(0, 0.05^2); X = Z A with
    correlated features (A = I + G / sqrt(n_in)), the channels of :data:`OUTLIER_CHANNELS`
    that exist scaled up.  Deterministic in ``seed``."""
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((n_in, n_in)) / np.sqrt(n_in) + np.eye(n_in)
    x = rng.standard_normal((n, n_in)) @ a
    for j, f in OUTLIER_CHANNELS.items():
        if j < n_in:
            x[:, j] *= f
    w = rng.standard_normal((out, n_in)) * 0.05
    return w.astype(np.float32), x.astype(np.float32)
