"""Structured pruning: rank the neurons of Linear layers and the channels of Conv2d layers,
and remove the least important ones physically (:mod:`.surgery`).

Importance of output c of a layer, with a_{n,c,p} the activation the *next* layer reads
(after BatchNorm / ReLU / pooling; p runs over the spatial positions, P of them, 1 for a
Linear) on a data sample of N inputs, and g = dL/da:

* ``"l1"`` / ``"l2"``  ||W_c||_1 or ||W_c||_2 over the filter (Li et al. 2017, "Pruning
  Filters for Efficient ConvNets", use the L1 norm);
* ``"mean_abs"``       (1 / NP) sum_{n,p} |a_{n,c,p}|   (mean activation magnitude);
* ``"apoz"``           1 - APoZ_c, APoZ_c = (1 / NP) sum_{n,p} [a_{n,c,p} = 0]
                       (Hu et al. 2016, "Network Trimming": a neuron that is mostly zero
                       after ReLU carries little; high APoZ is pruned first);
* ``"taylor"``         (1 / N) sum_n | (1 / P) sum_p a_{n,c,p} g_{n,c,p} |
                       with L the mean loss over all N samples (whatever ``batch_size``)
                       (Molchanov et al. 2017, "Pruning Convolutional Neural Networks for
                       Resource Efficient Inference": the first-order Taylor estimate of the
                       loss change when the channel is set to zero; Molchanov et al. 2019
                       make the same first-order argument on the weights).

Keeping: the k = n - round(amount * n) most important outputs of each layer, by a stable
descending sort, so among equal scores the lower index is kept.  A layer that ``amount``
would empty keeps its single most important output, with a warning.  All importances
are measured on the unpruned model first, then every layer is cut.
"""

from __future__ import annotations

import warnings

import numpy as np

from .._validation import check_array, check_choice, check_int
from ..errors import ArgumentError, DTypeError
from ..nn.layers import Linear
from ..nn.losses import cross_entropy
from ..nn.module import Module
from .magnitude import check_amount, n_pruned
from .surgery import find_link, prunable_links, prune_outputs

__all__ = ["CRITERIA", "weight_norm_importance", "channel_importance", "select_outputs",
           "structured_prune"]

CRITERIA = ("l1", "l2", "mean_abs", "apoz", "taylor")


def weight_norm_importance(weight, p: int = 1) -> np.ndarray:
    """||W_c||_p per output c of a [out, ...] weight (float64 [out])."""
    w = check_array(weight, "weight", min_ndim=2, finite=True)
    check_choice(p, "p", (1, 2))
    w2 = w.reshape(w.shape[0], -1).astype(np.float64)
    return np.abs(w2).sum(axis=1) if p == 1 else np.sqrt((w2 * w2).sum(axis=1))


class _Tap(Module):
    """Wraps a consumer layer: records its input a on forward and dL/da on backward, each
    as [N, channels, P].

    channels_last : the producer is a Linear, whose outputs are the last axis of its
                    [N, ..., F] result (also after Flatten: index p * F + c); a Conv2d's
                    are axis 1 of [N, C, H, W] (after Flatten: index c * P + p).
    """

    def __init__(self, inner: Module, channels: int, channels_last: bool):
        super().__init__()
        self.inner = inner
        self.channels = channels
        self.channels_last = channels_last
        self.acts, self.grads = [], []

    def _split(self, x):
        x = np.asarray(x)
        if self.channels_last:
            return x.reshape(len(x), -1, self.channels).transpose(0, 2, 1)
        return x.reshape(len(x), self.channels, -1)

    def forward(self, x):
        self.acts.append(self._split(x))
        return self.inner(x)

    def backward(self, grad_out):
        g = self.inner.backward(grad_out)
        self.grads.append(self._split(g))
        return g


def _activation_scores(acts, grads, criterion) -> np.ndarray:
    a = np.concatenate(acts).astype(np.float64)  # [N, C, P]
    if criterion == "mean_abs":
        return np.abs(a).mean(axis=(0, 2))
    if criterion == "apoz":
        return 1.0 - (a == 0).mean(axis=(0, 2))
    g = np.concatenate(grads).astype(np.float64)
    return np.abs((a * g).mean(axis=2)).mean(axis=0)


def channel_importance(model: Module, criterion: str = "l1", X=None, y=None, *, layers=None,
                       batch_size: int = 128, loss=cross_entropy) -> dict:
    """{layer name: importance [n_out] float64} for each layer to prune.

    layers    : producer names (default: every Linear / Conv2d whose outputs can be removed,
                i.e. all but the last).
    X, y      : the data sample for the activation criteria (``y`` for "taylor" only);
                the model's parameters, buffers and train/eval mode are left as they were
                ("taylor" runs forward/backward in training mode and restores the state).
    """
    check_choice(criterion, "criterion", CRITERIA)
    links = _links(model, layers)
    if criterion in ("l1", "l2"):
        p = 1 if criterion == "l1" else 2
        return {lk.producer: weight_norm_importance(model.get_submodule(lk.producer).weight.data, p)
                for lk in links}
    if X is None:
        raise ArgumentError(f"X: criterion {criterion!r} needs a data sample, got None")
    X = check_array(X, "X", min_ndim=2)
    if len(X) == 0:
        raise ArgumentError(f"X: criterion {criterion!r} needs at least one sample, got shape {X.shape}")
    if criterion == "taylor":
        if y is None:
            raise ArgumentError("y: criterion 'taylor' needs targets for the loss gradient, got None")
        y = check_array(y, "y", ndim=1)
        if len(y) != len(X):
            raise ArgumentError(f"y: expected {len(X)} targets (one per sample), got {len(y)}")
    batch_size = check_int(batch_size, "batch_size", min_value=1)
    taps = {}
    for lk in links:
        n = model.get_submodule(lk.producer)
        linear = isinstance(n, Linear)
        taps[lk.consumer] = (model.get_submodule(lk.consumer),
                             _Tap(model.get_submodule(lk.consumer),
                                  n.out_features if linear else n.out_channels, linear))
    was_training = model.training
    saved = model.state_dict() if criterion == "taylor" else None
    for name, (_, tap) in taps.items():
        model.set_submodule(name, tap)
    try:
        if criterion == "taylor":
            model.train()
            for s in range(0, len(X), batch_size):
                xb = X[s : s + batch_size]
                out = model(xb)
                _, grad = loss(out, y[s : s + batch_size])
                # The loss is a batch mean (its gradient carries 1 / len(batch)); rescaled,
                # g is the gradient of the mean loss over all N samples, so the scores do
                # not depend on batch_size (a short last batch is not over-weighted).
                model.backward(grad * (len(xb) / len(X)))
        else:
            model.eval()
            for s in range(0, len(X), batch_size):
                model(X[s : s + batch_size])
    finally:
        for name, (inner, _) in taps.items():
            model.set_submodule(name, inner)
        if saved is not None:
            model.load_state_dict(saved)
            model.zero_grad()
        model.train(was_training)
    return {lk.producer: _activation_scores(taps[lk.consumer][1].acts, taps[lk.consumer][1].grads,
                                            criterion) for lk in links}


def _links(model, layers):
    if layers is None:
        links = prunable_links(model)
        if not links:
            raise ArgumentError("model: has no layer whose outputs can be removed")
        return links
    if isinstance(layers, str) or not hasattr(layers, "__iter__"):
        raise DTypeError(f"layers: expected a list of layer names, got {type(layers).__name__}")
    return [find_link(model, n) for n in layers]


def select_outputs(importance, amount: float, name: str = "layer") -> np.ndarray:
    """Sorted indices of the k = n - round(amount * n) largest ``importance`` values (stable:
    among ties the lower index is kept); k = 0 becomes 1 with a RuntimeWarning."""
    s = check_array(importance, "importance", ndim=1, finite=True)
    amount = check_amount(amount)
    n = s.size
    k = n - n_pruned(amount, n)
    if k < 1:
        warnings.warn(f"amount: pruning {amount} of the {n} outputs of {name} would remove all "
                      f"of them; keeping the most important one", RuntimeWarning, stacklevel=3)
        k = 1
    # argsort of -s is stable, so equal scores keep their index order: lower index first.
    order = np.argsort(-s, kind="stable")
    return np.sort(order[:k])


def structured_prune(model: Module, amount, criterion: str = "l1", X=None, y=None, *,
                     layers=None, batch_size: int = 128, loss=cross_entropy) -> dict:
    """Remove the least important ``amount`` of the outputs of each layer, in place.

    amount : a fraction in [0, 1] for every layer, or {layer name: fraction} (layers not
             named are left whole).
    Returns {layer name: kept indices (into the original outputs)}.  The model becomes a
    smaller dense model (see :mod:`.surgery`); fine-tune it afterwards.
    """
    links = _links(model, layers)
    if isinstance(amount, dict):
        known = {lk.producer for lk in links}
        unknown = sorted(set(amount) - known)
        if unknown:
            raise ArgumentError(f"amount: names {unknown} are not among the layers that can be "
                                f"pruned ({sorted(known)})")
        amounts = {n: check_amount(a, f"amount[{n!r}]") for n, a in amount.items()}
        links = [lk for lk in links if amounts.get(lk.producer, 0.0) > 0]
        if not links:
            return {}
    else:
        a = check_amount(amount)
        amounts = {lk.producer: a for lk in links}
    names = [lk.producer for lk in links]
    scores = channel_importance(model, criterion, X, y, layers=names, batch_size=batch_size, loss=loss)
    kept = {n: select_outputs(scores[n], amounts[n], repr(n)) for n in names}
    for n in names:
        layer = model.get_submodule(n)
        total = layer.out_features if isinstance(layer, Linear) else layer.out_channels
        if len(kept[n]) < total:
            prune_outputs(model, n, kept[n])
    return kept
