"""Model metrics for reports: parameters, stored bytes, MACs, latency, accuracy.

What is counted, exactly:

* ``count_parameters``: the number of elements of every trained :class:`nn.Parameter`
  (each shared Parameter once).  Buffers (BatchNorm running statistics, integer weights of
  quantized layers) are not parameters.
* ``stored_bytes``: ``sum(a.nbytes for a in model.state_dict().values())``: the bytes of
  every array a saved model holds (parameters and buffers, at their stored dtypes: an int8
  weight counts 1 byte per element, a CSR layer its data + indices + indptr).  File
  headers and metadata are not counted.
* ``count_macs``: multiply-accumulates per sample of the layers that do the arithmetic,
  measured by forward hooks on one sample:

      dense layer  (in_features, out_features):       MACs = (output.size / N) * in_features
                   (= in * out for an [N, in] input)
      convolution  (in_channels, out_channels, kernel_size, groups):
                   MACs = OH * OW * C_out * (C_in / groups) * KH * KW

      factored Linear (``LowRankLinear``, ``QuantizedLowRankLinear``; in eval mode one
                   fused call, so counted as one layer):
                   MACs = (n + m) r per row, x B^T then h A^T

  Any module without children that has ``in_features``/``out_features`` (Linear,
  quantized and weight-only linear layers) or ``in_channels``/``out_channels``/
  ``kernel_size``/``groups`` (Conv2d and its quantized forms) is counted by those rules;
  other classes can be given their own rule with :func:`register_mac_counter` (a module
  with children that has a rule is counted by it alone, its descendants not).  Bias
  additions, activations, pooling, BatchNorm and requantization are not counted.
* ``measure_latency``: the median wall time of ``model(x)`` in eval mode.
* ``accuracy``: the fraction of rows whose arg-max output equals the label.
* ``embedding_fidelity``: how close a compressed encoder's embeddings stay to the
  reference's on the same inputs -- per row cos(e_i, e'_i) (its min and mean), and the
  Spearman rank correlation between the two models' pairwise similarities
  {cos(e_i, e_j) : i < j}, which is what retrieval and clustering consume.
"""

from __future__ import annotations

import time
from typing import Callable

import numpy as np

from .. import nn
from .._validation import check_array, check_int
from ..errors import ArgumentError, DTypeError, ShapeError

__all__ = [
    "count_parameters",
    "stored_bytes",
    "count_macs",
    "register_mac_counter",
    "measure_latency",
    "accuracy",
    "embedding_fidelity",
    "spearman",
]

_MAC_COUNTERS: dict[type, Callable] = {}


def _check_model(model):
    if not isinstance(model, nn.Module):
        raise DTypeError(f"model: expected a refcompress.nn.Module, got {type(model).__name__}")
    return model


def count_parameters(model) -> int:
    """Total number of trained parameter elements, sum of ``p.size`` over ``model.parameters()``."""
    return int(sum(p.size for p in _check_model(model).parameters()))


def stored_bytes(model) -> int:
    """Bytes of the model's arrays as stored: sum of ``a.nbytes`` over its parameters and
    buffers, each counted once (a module used at two places is listed under both paths of
    the state dict, but stored once)."""
    model = _check_model(model)
    return int(sum(p.data.nbytes for p in model.parameters())
               + sum(b.nbytes for _, b in model.named_buffers()))


def register_mac_counter(cls: type, fn: Callable) -> None:
    """Count MACs of modules of type ``cls`` (and subclasses) with ``fn(module, inputs,
    output) -> int``, the MACs of the whole batch in ``output`` (divided by the batch size
    afterwards).  A registered rule takes precedence over the attribute rules, and counts
    a module with children as a whole (its descendants are then not counted)."""
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise DTypeError(f"cls: expected a Module subclass, got {cls!r}")
    if not callable(fn):
        raise DTypeError(f"fn: expected a callable, got {type(fn).__name__}")
    _MAC_COUNTERS[cls] = fn


_MAC_COUNTERS_READY = False


def _register_builtin_counters() -> None:
    """The rules of this library's factored Linear layers (imported on first use: the
    technique packages do not import the pipeline).  A LowRankLinear in eval mode runs both
    factors in one fused kernel call, so its children's hooks never fire: it is counted as
    one layer (QuantizedLowRankLinear is one anyway)."""
    global _MAC_COUNTERS_READY
    from ..lowrank.layers import LowRankLinear, QuantizedLowRankLinear

    _MAC_COUNTERS.setdefault(QuantizedLowRankLinear, _factored_macs)
    _MAC_COUNTERS.setdefault(LowRankLinear, _factored_macs)
    _MAC_COUNTERS_READY = True


def _counts_whole(module) -> bool:
    """Whether a module with a registered rule is counted by it as a whole (its
    descendants not counted): always, except a LowRankLinear whose factors are no longer
    dense Linear layers (e.g. SparseLinear after pruning), which runs them, so they are
    counted by their own rules."""
    factors = getattr(type(module), "_factors", None)
    return factors is None or factors(module) is not None


def _dense_macs(module, inputs, output) -> int:
    return int(np.asarray(output).size) * int(module.in_features)


def _factored_macs(module, inputs, output) -> int:
    """A factored Linear kept as one leaf (the int8 QuantizedLowRankLinear): x B^T, then
    h A^T, (n + m) r per row -- not the dense rule's n m."""
    rows = int(np.asarray(output).size) // max(int(module.out_features), 1)
    return rows * (int(module.in_features) + int(module.out_features)) * int(module.rank)


def _conv_macs(module, inputs, output) -> int:
    out = np.asarray(output)
    if out.ndim != 4:
        raise ShapeError(f"{type(module).__name__}: expected a 4-D (N, C, H, W) output, got shape {out.shape}")
    kh, kw = module.kernel_size
    return int(out.size) * (int(module.in_channels) // int(module.groups)) * int(kh) * int(kw)


def _counter_for(module):
    if not _MAC_COUNTERS_READY:
        _register_builtin_counters()
    for klass in type(module).__mro__:
        if klass in _MAC_COUNTERS:
            return _MAC_COUNTERS[klass] if _counts_whole(module) else None
    if next(module.children(), None) is not None:
        return None
    if all(hasattr(module, a) for a in ("in_channels", "out_channels", "kernel_size", "groups")):
        return _conv_macs
    if all(hasattr(module, a) for a in ("in_features", "out_features")):
        return _dense_macs
    return None


def count_macs(model, input_shape, *, dtype=np.float32, per_layer: bool = False):
    """Multiply-accumulates per sample of ``model`` on inputs of per-sample shape
    ``input_shape`` (no batch axis, e.g. (1, 8, 8) or (64,)); the rules are in the module
    docstring.

    One forward pass on a zero batch of shape (1, *input_shape) and ``dtype`` runs in
    eval mode (the mode is restored), so the count follows the actual output sizes.
    Returns an int, or with ``per_layer`` a dict {dotted module name: MACs} of the
    counted layers (in forward order).
    """
    _check_model(model)
    if isinstance(input_shape, (int, np.integer)):
        input_shape = (input_shape,)
    if not isinstance(input_shape, (tuple, list)) or not input_shape:
        raise ArgumentError(f"input_shape: expected a non-empty tuple of ints (one sample, no batch axis), "
                            f"got {input_shape!r}")
    shape = tuple(check_int(d, f"input_shape[{i}]", min_value=1) for i, d in enumerate(input_shape))
    counts: dict[str, int] = {}
    handles = []

    def hook_for(name, fn):
        def hook(module, inputs, output):
            counts[name] = counts.get(name, 0) + fn(module, inputs, output)
        return hook

    whole = []  # modules counted by a registered rule as a whole: their descendants are not
    for name, module in model.named_modules():
        if any(name.startswith(w) for w in whole):
            continue
        fn = _counter_for(module)
        if fn is not None:
            handles.append(module.register_forward_hook(hook_for(name or "<root>", fn)))
            if next(module.children(), None) is not None:
                whole.append(name + "." if name else "")
    was_training = model.training
    model.eval()
    try:
        model(np.zeros((1, *shape), dtype=dtype))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return dict(counts) if per_layer else int(sum(counts.values()))


def measure_latency(model, x, repeats: int = 50, *, warmup: int = 3) -> float:
    """Median wall-clock seconds of one ``model(x)`` call in eval mode (``model(*x)`` when
    ``x`` is a tuple of inputs, e.g. a transformer's ids, mask and type ids).

    ``warmup`` calls run first and are not timed (first-call allocations, lazily packed
    weights, cold caches); then ``repeats`` calls are each timed with
    ``time.perf_counter``.  The median is robust to the occasional interruption of a
    shared machine.  The model's train/eval mode is restored.
    """
    _check_model(model)
    args = tuple(check_array(a, f"x[{i}]", min_ndim=1) for i, a in enumerate(x)) if isinstance(x, tuple) \
        else (check_array(x, "x", min_ndim=1),)
    repeats = check_int(repeats, "repeats", min_value=1)
    warmup = check_int(warmup, "warmup", min_value=0)
    was_training = model.training
    model.eval()
    try:
        for _ in range(warmup):
            model(*args)
        times = np.empty(repeats)
        for i in range(repeats):
            t0 = time.perf_counter()
            model(*args)
            times[i] = time.perf_counter() - t0
    finally:
        model.train(was_training)
    return float(np.median(times))


def accuracy(model, X, y, *, batch_size: int = 256) -> float:
    """Fraction of samples with ``argmax(model(X)[i]) == y[i]``, in eval mode.

    X : (N, ...) model inputs; y : (N,) integer class labels.  Returns a float in [0, 1].
    """
    _check_model(model)
    X = check_array(X, "X", min_ndim=1)
    y = check_array(y, "y", ndim=1)
    if y.dtype.kind not in "iu":
        raise DTypeError(f"y: expected an integer dtype (class labels), got {y.dtype.name}")
    if len(y) != len(X):
        raise ShapeError(f"y: expected {len(X)} labels (one per row of X), got shape {y.shape}")
    if len(X) == 0:
        raise ShapeError(f"X: expected at least one sample, got shape {X.shape}")
    batch_size = check_int(batch_size, "batch_size", min_value=1)
    out = nn.predict(model, X, batch_size=batch_size)
    if out.ndim != 2 or len(out) != len(y):
        raise ShapeError(f"model: expected (N, classes) outputs, got shape {out.shape}")
    return float(np.mean(out.argmax(axis=1) == y))


def _ranks(v: np.ndarray) -> np.ndarray:
    """Ranks 1..n of ``v``, ties sharing their average rank (Spearman's convention)."""
    order = np.argsort(v, kind="stable")
    sorted_v = v[order]
    ranks = np.empty(len(v), dtype=np.float64)
    i = 0
    while i < len(v):
        j = i
        while j + 1 < len(v) and sorted_v[j + 1] == sorted_v[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2.0 + 1.0
        i = j + 1
    return ranks


def spearman(a, b) -> float:
    """Spearman's rank correlation of two 1-D samples: Pearson's r of their ranks
    (ties get average ranks).  Both of length n >= 2 and not constant."""
    a = check_array(a, "a", ndim=1, finite=True)
    b = check_array(b, "b", ndim=1, finite=True, shape=(len(a),))
    if len(a) < 2:
        raise ShapeError(f"a: expected at least 2 values, got {len(a)}")
    ra, rb = _ranks(a.astype(np.float64)), _ranks(b.astype(np.float64))
    ra -= ra.mean()
    rb -= rb.mean()
    denom = np.sqrt((ra @ ra) * (rb @ rb))
    if denom == 0:
        raise ArgumentError("a, b: a constant sample has no rank correlation")
    return float((ra @ rb) / denom)


def embedding_fidelity(reference, compressed) -> dict:
    """Compare two [n, d] embedding matrices row by row (n >= 2).

    Returns ``{"min_cos", "mean_cos", "spearman"}``: the smallest and mean
    cos(reference_i, compressed_i), and the Spearman correlation between the n(n-1)/2
    pairwise cosine similarities of the reference and those of the compressed rows.
    """
    ref = check_array(reference, "reference", ndim=2, finite=True).astype(np.float64)
    cmp_ = check_array(compressed, "compressed", ndim=2, finite=True, shape=ref.shape).astype(np.float64)
    if len(ref) < 2:
        raise ShapeError(f"reference: expected at least 2 rows, got shape {ref.shape}")

    def unit(e, name):
        norm = np.linalg.norm(e, axis=1, keepdims=True)
        if np.any(norm == 0):
            raise ArgumentError(f"{name}: a row is all zeros (its cosine is undefined)")
        return e / norm

    ref, cmp_ = unit(ref, "reference"), unit(cmp_, "compressed")
    cos = np.sum(ref * cmp_, axis=1)
    iu = np.triu_indices(len(ref), k=1)
    return {"min_cos": float(cos.min()), "mean_cos": float(cos.mean()),
            "spearman": spearman((ref @ ref.T)[iu], (cmp_ @ cmp_.T)[iu])}
