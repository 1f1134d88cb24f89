"""Applying a pruning mask to a layer, keeping it enforced while training, and removing it.

Computing a mask (:mod:`.magnitude`, :mod:`.nm`) is separate from applying it (here).  A
mask is a boolean array of the parameter's shape, True = kept.  :func:`apply_mask`

* zeroes the pruned entries:             W <- W * M,
* masks the gradient before every update: g <- g * M   (a Parameter grad hook), so a pruned
  weight receives no update and optimizer state (momentum, Adam moments) sees zeros,
* re-applies the mask after every update: W <- W * M   (a post-step hook), which undoes
  what decoupled weight decay or momentum built up before the weight was pruned.
  ``Module.load_state_dict`` runs the same hook after a load, so loading a dense (or
  earlier, less sparse) state dict — e.g. ``nn.fit(..., restore_best=True)`` restoring an
  epoch before a schedule raised the sparsity — keeps the pruned weights zero.

The mask lives with the layer (``layer._prune_masks[name]``, with its hook handles), is
replaced in place when a schedule raises the sparsity (the hooks read the current mask), and
is a training-time device only: a masked dense layer costs exactly as much as an unmasked one.
The payoff comes from :func:`refcompress.prune.to_sparse` (CSR / N:M layers) or from
structured pruning, which removes rows and channels for real.
"""

from __future__ import annotations

import numpy as np

from .._validation import check_array
from ..errors import ArgumentError, DTypeError, ShapeError
from ..nn.layers import Conv2d, Linear
from ..nn.module import Module

__all__ = [
    "apply_mask",
    "apply_masks",
    "get_mask",
    "remove_mask",
    "remove_masks",
    "masked_layers",
    "prunable_layers",
    "sparsity",
    "model_sparsity",
]

_MASKS = "_prune_masks"
_HANDLES = "_prune_handles"


class _GradMask:
    """Grad hook g -> g * M.  An object rather than a closure so that ``copy.deepcopy`` of a
    model copies the reference to the layer along with it (a closure would keep pointing at
    the original layer's mask)."""

    def __init__(self, layer: Module, name: str):
        self.layer, self.name = layer, name

    def __call__(self, grad):
        return grad * self.layer.__dict__[_MASKS][self.name]


class _WeightMask:
    """Post-step hook W <- W * M (see :class:`_GradMask` for why it is an object)."""

    def __init__(self, layer: Module, name: str):
        self.layer, self.name = layer, name

    def __call__(self, param):
        param.data = param.data * self.layer.__dict__[_MASKS][self.name]


def _check_layer(layer, name):
    if not isinstance(layer, Module):
        raise DTypeError(f"layer: expected a Module, got {type(layer).__name__}")
    p = layer._parameters.get(name) if isinstance(name, str) else None
    if p is None:
        raise ArgumentError(f"name: {type(layer).__name__} has no parameter {name!r}")
    return p


def apply_mask(layer: Module, mask, name: str = "weight") -> Module:
    """Attach boolean ``mask`` (shape of ``layer.<name>``, True = kept) to the layer.

    Zeroes the pruned weights now and keeps them zero through training (masked gradients
    and a re-mask after each optimizer step).  Applying again replaces the mask (the hooks
    are registered once).  Returns ``layer``.
    """
    p = _check_layer(layer, name)
    mask = check_array(mask, "mask", dtypes=(np.bool_,), shape=p.shape)
    mask = np.array(mask, copy=True)
    masks = layer.__dict__.setdefault(_MASKS, {})
    handles = layer.__dict__.setdefault(_HANDLES, {})
    masks[name] = mask
    if name not in handles:
        handles[name] = (p.register_grad_hook(_GradMask(layer, name)),
                         p.register_post_step_hook(_WeightMask(layer, name)))
    p.data = p.data * mask.astype(p.dtype)
    if p.grad is not None:
        p.grad = p.grad * mask
    return layer


def apply_masks(model: Module, masks: dict, name: str = "weight") -> Module:
    """Apply ``masks`` ({dotted layer name: bool mask}) to the layers of ``model``."""
    if not isinstance(masks, dict):
        raise DTypeError(f"masks: expected a dict of layer name -> mask, got {type(masks).__name__}")
    layers = {k: model.get_submodule(k) for k in masks}
    for k, m in masks.items():
        # Check every mask before changing any layer: no model is left half-pruned.
        p = _check_layer(layers[k], name)
        check_array(m, f"masks[{k!r}]", dtypes=(np.bool_,), shape=p.shape)
    for k, m in masks.items():
        apply_mask(layers[k], m, name)
    return model


def get_mask(layer: Module, name: str = "weight"):
    """The mask attached to ``layer.<name>``, or None."""
    return layer.__dict__.get(_MASKS, {}).get(name)


def remove_mask(layer: Module, name: str = "weight") -> Module:
    """Detach the mask and its hooks; the zeros stay in the weight (they *are* the pruning)."""
    handles = layer.__dict__.get(_HANDLES, {})
    for h in handles.pop(name, ()):
        h.remove()
    layer.__dict__.get(_MASKS, {}).pop(name, None)
    return layer


def remove_masks(model: Module) -> Module:
    """:func:`remove_mask` on every masked layer of ``model``."""
    for _, layer in masked_layers(model):
        for name in list(layer.__dict__.get(_MASKS, {})):
            remove_mask(layer, name)
    return model


def masked_layers(model: Module):
    """[(dotted name, layer)] of the layers of ``model`` that carry a mask."""
    return [(n, m) for n, m in model.named_modules() if m.__dict__.get(_MASKS)]


def prunable_layers(model: Module, layers=None, types=(Linear, Conv2d)) -> list:
    """[(dotted name, layer)] to prune: ``layers`` (names, in that order) or every Linear and
    Conv2d of ``model`` in definition order."""
    if not isinstance(model, Module):
        raise DTypeError(f"model: expected a Module, got {type(model).__name__}")
    if layers is None:
        found = [(n, m) for n, m in model.named_modules() if isinstance(m, types)]
        if not found:
            raise ArgumentError(f"model: has no {'/'.join(t.__name__ for t in types)} layer to prune")
        return found
    if isinstance(layers, str) or not hasattr(layers, "__iter__"):
        raise DTypeError(f"layers: expected a list of layer names, got {type(layers).__name__}")
    out = []
    for n in layers:
        m = model.get_submodule(n)
        if not isinstance(m, types):
            raise ArgumentError(
                f"layers: {n!r} is a {type(m).__name__}, expected one of "
                f"{', '.join(t.__name__ for t in types)}")
        out.append((n, m))
    if not out:
        raise ArgumentError("layers: expected at least one layer name, got none")
    return out


def check_untied(model: Module, action: str, types=None, only=None) -> None:
    """Raise ArgumentError if one module holding parameters or buffers (a Linear, Conv2d,
    BatchNorm, ...) appears at two places of ``model`` (a layer used twice: weight tying);
    ``types`` limits the check to those classes and ``only`` (a set of ``id()``s) to those
    modules.  Parameter-free modules (a ReLU instance reused) are fine.  ``action`` names
    what cannot be done to such a model."""
    # Module.named_modules() lists a shared module once, so the tree is walked here.
    seen = {}

    def walk(m, prefix, path):
        for name, child in m._modules.items():
            if child is None or id(child) in path:
                continue
            full = f"{prefix}.{name}" if prefix else name
            stateful = any(v is not None for v in child._parameters.values()) or \
                any(v is not None for v in child._buffers.values())
            if stateful and (types is None or isinstance(child, types)) and (only is None or id(child) in only):
                if id(child) in seen:
                    raise ArgumentError(
                        f"model: {seen[id(child)]!r} and {full!r} are the same "
                        f"{type(child).__name__} (a layer used twice); {action} would change "
                        f"one use and not the other — untie them first (a separate copy each)")
                seen[id(child)] = full
            walk(child, full, path | {id(child)})

    walk(model, "", {id(model)})


def sparsity(array) -> float:
    """Fraction of exact zeros in ``array`` (a weight, or a mask where False = pruned)."""
    a = np.asarray(array)
    if a.size == 0:
        raise ShapeError("array: expected a non-empty array, got size 0")
    return float(np.count_nonzero(a == 0) / a.size)


def model_sparsity(model: Module, layers=None) -> float:
    """Fraction of zero weights over the prunable layers' weights (biases not counted)."""
    total = zeros = 0
    for _, m in prunable_layers(model, layers):
        w = m.weight.data
        total += w.size
        zeros += int(np.count_nonzero(w == 0))
    return zeros / total
