"""Unstructured magnitude pruning (Han et al. 2015, "Learning both Weights and Connections
for Efficient Neural Networks").

The score of a weight is its magnitude, s_ij = |W_ij|; pruning keeps the largest scores.

* by amount:    prune the k = round(amount * size) smallest scores (round half to
                 even, of the exact decimal ``amount``: 0.35 of 90 prunes 32),
* by threshold: keep s_ij > t, prune s_ij <= t,
* Han et al.'s threshold: t = quality * std(W) (std over the layer's weights, population
  standard deviation, ddof = 0),

either per layer (each layer loses ``amount`` of its own weights) or globally (one ranking
over the weights of all the layers, so layers with many small weights lose more).

Ties are broken deterministically: scores are ranked by a stable sort, so among equal
scores the weight that comes first in row-major order (and, globally, in the earlier layer
of ``layers``) is pruned first.  A threshold needs no tie rule (``<= t`` is pruned).

These functions compute masks (boolean, True = kept); :func:`refcompress.prune.apply_masks`
applies them.  ``magnitude_prune`` / ``global_magnitude_prune`` do both.
"""

from __future__ import annotations

import warnings
from fractions import Fraction

import numpy as np

from .._validation import check_array, check_choice, check_float
from ..errors import ArgumentError
from ..nn.functional import FLOAT_DTYPES
from ..nn.module import Module
from .masks import apply_masks, prunable_layers

__all__ = [
    "magnitude_scores",
    "mask_by_amount",
    "mask_by_threshold",
    "han_threshold",
    "layer_masks",
    "global_masks",
    "magnitude_prune",
    "global_magnitude_prune",
]


def check_amount(amount, name: str = "amount") -> float:
    """A pruning fraction in [0, 1]."""
    return check_float(amount, name, min_value=0.0, max_value=1.0)


# Slack on an accuracy-drop budget: 0.97 - 0.96 is 0.010000000000000009 in floats, and a
# drop equal to the budget is within it.  Far below any accuracy difference that matters.
BUDGET_TOLERANCE = 1e-9


def over_budget(baseline: float, accuracy: float, max_drop: float) -> bool:
    """baseline - accuracy > max_drop + BUDGET_TOLERANCE (a drop equal to ``max_drop``, up
    to float error, is within budget)."""
    return baseline - accuracy > max_drop + BUDGET_TOLERANCE


def magnitude_scores(weight) -> np.ndarray:
    """s = |W| (same shape as ``weight``, float)."""
    w = check_array(weight, "weight", dtypes=FLOAT_DTYPES, finite=True)
    return np.abs(w)


def n_pruned(amount: float, size: int) -> int:
    """round-half-to-even(amount * size) with ``amount`` taken as the decimal its Python
    float prints as (0.35 of 90 is 31.5 -> 32; 0.7 of 45 is 31.5 -> 32).  A float32 amount
    is its float64 value: np.float32(0.35) is 0.3499999940395355, so 31."""
    # The float amount * size is off by an ulp for many typed fractions (0.35 * 90 =
    # 31.499999999999996 rounds to 31), so the product is taken exactly on the shortest
    # decimal that round-trips to the float (repr), which is what the user typed; Python's
    # round() of a Fraction is half-to-even, as PyTorch's l1_unstructured.
    return int(round(Fraction(repr(float(amount))) * size))


def mask_by_amount(scores, amount: float) -> np.ndarray:
    """Boolean mask pruning the k = round(amount * size) smallest ``scores``.

    Ties: a stable ascending sort of the flattened scores, so among equal scores the one
    with the lower row-major index is pruned first.  ``amount`` is in [0, 1].
    """
    s = check_array(scores, "scores", finite=True, min_ndim=1)
    amount = check_amount(amount)
    k = n_pruned(amount, s.size)
    mask = np.ones(s.size, dtype=bool)
    if k:
        order = np.argsort(s.reshape(-1), kind="stable")
        mask[order[:k]] = False
    return mask.reshape(s.shape)


def mask_by_threshold(scores, threshold: float) -> np.ndarray:
    """Boolean mask keeping scores strictly greater than ``threshold`` (>= 0)."""
    s = check_array(scores, "scores", finite=True, min_ndim=1)
    t = check_float(threshold, "threshold", min_value=0.0)
    return s > t


def han_threshold(weight, quality: float) -> float:
    """t = quality * std(W)  (Han et al. 2015, sec. 3: "the quality parameter multiplied by
    the standard deviation of a layer's weights").  ``quality`` >= 0.

    The std is taken over the nonzero weights when the layer is already partly pruned, so
    raising ``quality`` in an iterative loop raises the threshold relative to the weights
    that are still alive (the zeros would otherwise shrink the std round after round).
    """
    w = check_array(weight, "weight", finite=True, min_ndim=1)
    q = check_float(quality, "quality", min_value=0.0)
    alive = w[w != 0]
    if alive.size == 0:
        return 0.0
    return float(q * np.std(alive.astype(np.float64)))


def layer_masks(model: Module, *, amount=None, threshold=None, quality=None, layers=None) -> dict:
    """Per-layer magnitude masks {layer name: bool mask} for ``model``'s weights.

    Exactly one of ``amount`` (a fraction, or a dict {layer name: fraction}), ``threshold``
    (an absolute |w| threshold) or ``quality`` (Han et al.'s t = quality * std per layer)
    must be given.  ``layers``: names to prune (default every Linear and Conv2d).
    """
    given = [k for k, v in (("amount", amount), ("threshold", threshold), ("quality", quality))
             if v is not None]
    if len(given) != 1:
        raise ArgumentError(
            f"amount, threshold, quality: expected exactly one of them, got {given or 'none'}")
    named = prunable_layers(model, layers)
    if isinstance(amount, dict):
        unknown = sorted(set(amount) - {n for n, _ in named})
        if unknown:
            raise ArgumentError(f"amount: names {unknown} are not among the layers pruned")
    out = {}
    for name, layer in named:
        w = layer.weight.data
        s = magnitude_scores(w)
        if isinstance(amount, dict):
            out[name] = mask_by_amount(s, check_amount(amount.get(name, 0.0), f"amount[{name!r}]"))
        elif amount is not None:
            out[name] = mask_by_amount(s, check_amount(amount))
        elif threshold is not None:
            out[name] = mask_by_threshold(s, threshold)
        else:
            out[name] = mask_by_threshold(s, han_threshold(w, quality))
    return out


def global_masks(model: Module, amount: float, *, layers=None, normalize: str = "none") -> dict:
    """Global magnitude masks: one ranking of |w| over all the layers' weights, pruning the
    k = round(amount * total) smallest.

    normalize : "none" ranks raw |w| (Han et al.; Frankle & Carbin); "std" ranks |w| / std(W)
                of the layer, so that a layer is not emptied (or spared) by the scale of
                its initialisation alone: raw magnitudes scale as 1 / sqrt(fan_in), so a
                wide layer's weights are all small and a raw global ranking can remove it
                entirely (``global_magnitude_prune`` warns when a layer is emptied).
    Ties: stable sort over the concatenation in ``layers`` order, row-major within a layer.
    """
    amount = check_amount(amount)
    check_choice(normalize, "normalize", ("none", "std"))
    named = prunable_layers(model, layers)
    scores = []
    for _, layer in named:
        s = magnitude_scores(layer.weight.data).astype(np.float64)
        if normalize == "std":
            # std of the surviving weights, as in han_threshold: zeros from earlier rounds
            # would shrink it and make a pruned layer look ever more important
            w = layer.weight.data
            alive = w[w != 0].astype(np.float64)
            sd = float(np.std(alive)) if alive.size else 0.0
            s = s / sd if sd > 0 else s
        scores.append(s)
    flat = np.concatenate([s.reshape(-1) for s in scores])
    keep = mask_by_amount(flat, amount)
    out, start = {}, 0
    for (name, _), s in zip(named, scores):
        out[name] = keep[start : start + s.size].reshape(s.shape)
        start += s.size
    return out


def _warn_empty(masks: dict) -> dict:
    for name, m in masks.items():
        if m.size and not m.any():
            warnings.warn(f"layer {name!r} loses all of its weights; its outputs become constant "
                          f"(its bias) and the network is cut there", RuntimeWarning, stacklevel=3)
    return masks


def magnitude_prune(model: Module, *, amount=None, threshold=None, quality=None, layers=None) -> dict:
    """Compute :func:`layer_masks` and apply them (masks enforced in fine-tuning); returns them."""
    masks = _warn_empty(layer_masks(model, amount=amount, threshold=threshold, quality=quality, layers=layers))
    apply_masks(model, masks)
    return masks


def global_magnitude_prune(model: Module, amount: float, *, layers=None, normalize: str = "none") -> dict:
    """Compute :func:`global_masks` and apply them; returns them."""
    masks = _warn_empty(global_masks(model, amount, layers=layers, normalize=normalize))
    apply_masks(model, masks)
    return masks
