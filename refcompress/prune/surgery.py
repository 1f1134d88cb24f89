"""Layer surgery: remove output neurons / channels physically, and the inputs that read them.

A model is read as a chain of leaf modules (a :class:`~refcompress.nn.Sequential`, nested
Sequentials flattened in order).  For a producer P (Linear or Conv2d) the chain is walked
forward through modules that act per channel — BatchNorm1d/2d (sliced with P), ReLU,
Dropout, MaxPool2d / AvgPool2d / GlobalAvgPool2d, Flatten — to the consumer C, the next
Linear or Conv2d (groups = 1).  Keeping output indices K of P means

    P.weight <- P.weight[K],  P.bias <- P.bias[K]                      (rows / filters)
    BN.{weight, bias, running_mean, running_var} <- [K]
    C.weight <- C.weight[:, K]                                          (Conv2d / Linear)
    C.weight <- C.weight[:, cols(K)]                                    (through Flatten;
                                                          S = C.in_features / n_out(P))
        cols(K) = {k * S + s : k in K, s < S}   for a Conv2d P, in that order
        cols(K) = {s * n_out(P) + k : s < S, k in K}   for a Linear P, in that order

because Flatten lays channel k's S = H*W values out contiguously (row-major NCHW), while a
Linear's outputs are the last axis of its [N, ..., n_out] result (a Linear applied to
[N, T, F] inputs puts output k of position t at t * n_out + k; S = 1 for 2-D inputs,
where both rules agree).  Likewise the importance criteria read a Linear's activations
channels last.  The
model computes exactly the same function on the kept channels, and the removed channels'
contribution to C is dropped — which is what the importance criteria estimate as small.
The result is an ordinary dense model: fewer parameters, fewer MACs, faster.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .._validation import check_array
from ..errors import ArgumentError, DTypeError, ShapeError
from ..nn.container import Sequential
from ..nn.layers import Conv2d, Dropout, Flatten, Linear, ReLU
from ..nn.module import Module, Parameter
from ..nn.norm import BatchNorm1d, BatchNorm2d, _BatchNorm
from ..nn.pooling import AvgPool2d, GlobalAvgPool2d, MaxPool2d
from .masks import apply_mask, check_untied, get_mask, remove_mask

__all__ = ["Link", "leaf_chain", "find_link", "prunable_links", "prune_outputs"]

_PASS = (ReLU, Dropout, MaxPool2d, AvgPool2d, GlobalAvgPool2d)


@dataclass
class Link:
    """A producer, the BatchNorms that follow it, and the consumer reading its outputs."""

    producer: str
    norms: list
    flatten: bool
    consumer: str


def leaf_chain(model: Module) -> list:
    """[(dotted name, module)] of the chain's leaves, nested Sequentials flattened.

    A layer with parameters or buffers used at two places is refused (surgery would
    rebuild one use and not the other)."""
    if not isinstance(model, Module):
        raise DTypeError(f"model: expected a Module, got {type(model).__name__}")
    if not isinstance(model, Sequential):
        raise ArgumentError(
            f"model: structured surgery needs a Sequential chain, got {type(model).__name__}")
    check_untied(model, "structured pruning")
    out = []

    def walk(seq, prefix):
        for name, child in seq.named_children():
            full = f"{prefix}.{name}" if prefix else name
            if isinstance(child, Sequential):
                walk(child, full)
            else:
                out.append((full, child))

    walk(model, "")
    return out


def _n_out(m) -> int:
    return m.out_features if isinstance(m, Linear) else m.out_channels


def find_link(model: Module, producer: str) -> Link:
    """The :class:`Link` of ``producer`` (a dotted layer name), or an error saying why its
    outputs cannot be removed (last layer, grouped consumer, an unknown module between)."""
    chain = leaf_chain(model)
    names = [n for n, _ in chain]
    if producer not in names:
        raise ArgumentError(f"layer: {producer!r} is not a leaf of the model's chain; leaves: {names}")
    i = names.index(producer)
    p = chain[i][1]
    if not isinstance(p, (Linear, Conv2d)):
        raise ArgumentError(f"layer: {producer!r} is a {type(p).__name__}, expected Linear or Conv2d")
    if isinstance(p, Conv2d) and p.groups != 1:
        raise ArgumentError(f"layer: {producer!r} is a grouped Conv2d (groups={p.groups}); "
                            f"removing its channels would change its groups")
    norms, flatten = [], False
    for name, m in chain[i + 1 :]:
        if isinstance(m, (Linear, Conv2d)):
            if isinstance(m, Conv2d) and m.groups != 1:
                raise ArgumentError(
                    f"layer: {producer!r} feeds the grouped Conv2d {name!r} (groups={m.groups}); "
                    f"its outputs cannot be removed alone")
            if isinstance(m, Conv2d) and flatten:
                raise ArgumentError(f"layer: {producer!r} reaches Conv2d {name!r} through a Flatten")
            if isinstance(m, Linear) and flatten and m.in_features % _n_out(p):
                raise ShapeError(
                    f"layer: {name!r} has in_features={m.in_features}, not a multiple of the "
                    f"{_n_out(p)} channels of {producer!r} that reach it through Flatten")
            want = m.in_features if isinstance(m, Linear) else m.in_channels
            if not flatten and want != _n_out(p):
                raise ShapeError(f"layer: {name!r} reads {want} inputs, {producer!r} writes {_n_out(p)}")
            return Link(producer, norms, flatten, name)
        if isinstance(m, _BatchNorm):
            if m.num_features != _n_out(p):
                raise ShapeError(f"layer: {name!r} normalises {m.num_features} channels, "
                                 f"{producer!r} writes {_n_out(p)}")
            norms.append(name)
        elif isinstance(m, Flatten):
            flatten = True
        elif not isinstance(m, _PASS):
            raise ArgumentError(
                f"layer: {producer!r} feeds {name!r} ({type(m).__name__}), which surgery does not "
                f"know how to slice per channel")
    raise ArgumentError(f"layer: {producer!r} is the model's last layer; its outputs are the "
                        f"model's outputs and cannot be removed")


def prunable_links(model: Module) -> list:
    """Every :class:`Link` of the chain (the producers whose outputs can be removed)."""
    links = []
    for name, m in leaf_chain(model):
        if isinstance(m, (Linear, Conv2d)):
            try:
                links.append(find_link(model, name))
            except (ArgumentError, ShapeError):
                continue
    return links


def _copy_into(new: Module, name: str, data: np.ndarray) -> None:
    setattr(new, name, Parameter(np.ascontiguousarray(data)))


def _with_mask(old: Module, new: Module, index) -> None:
    # A masked layer stays masked with its mask sliced the same way as its weight.
    m = get_mask(old)
    if m is not None:
        remove_mask(old)
        apply_mask(new, np.ascontiguousarray(m[index]))


def _rebuild(m: Module, rows=None, cols=None) -> Module:
    """A new Linear / Conv2d with weight[rows][:, cols] (None = all)."""
    r = slice(None) if rows is None else rows
    c = slice(None) if cols is None else cols
    w = m.weight.data[r][:, c]
    has_bias = m.bias is not None
    # The constructor's random init is overwritten at once; a private generator keeps it
    # from advancing the shared one (which would change any later seeded run).
    rng = np.random.default_rng(0)
    if isinstance(m, Linear):
        new = Linear(w.shape[1], w.shape[0], bias=has_bias, rng=rng)
    else:
        new = Conv2d(w.shape[1], w.shape[0], m.kernel_size, stride=m.stride, padding=m.padding,
                     dilation=m.dilation, groups=1, bias=has_bias, rng=rng)
    _copy_into(new, "weight", w)
    if has_bias:
        _copy_into(new, "bias", m.bias.data[r])
    new.to(m.weight.dtype)
    new.train(m.training)
    _with_mask(m, new, (r, c) if isinstance(m, Linear) else (r, c, slice(None), slice(None)))
    return new


def _rebuild_norm(bn: _BatchNorm, keep: np.ndarray) -> _BatchNorm:
    cls = BatchNorm1d if isinstance(bn, BatchNorm1d) else BatchNorm2d
    new = cls(len(keep), eps=bn.eps, momentum=bn.momentum, affine=bn.affine)
    if bn.affine:
        _copy_into(new, "weight", bn.weight.data[keep])
        _copy_into(new, "bias", bn.bias.data[keep])
    new.running_mean = np.ascontiguousarray(bn.running_mean[keep])
    new.running_var = np.ascontiguousarray(bn.running_var[keep])
    new.num_batches_tracked = np.array(bn.num_batches_tracked, copy=True)
    new.train(bn.training)
    return new


def prune_outputs(model: Module, layer: str, keep) -> Module:
    """Keep only output neurons / channels ``keep`` of ``layer`` (in place; returns ``model``).

    keep : 1-D integer indices, unique, in [0, n_out), at least one.  They are used sorted,
           so the kept channels keep their relative order.
    The following BatchNorms and the consumer's inputs shrink with it (module docstring).
    """
    link = find_link(model, layer)
    p = model.get_submodule(layer)
    n = _n_out(p)
    keep = check_array(keep, "keep", ndim=1)
    # emptiness first: an empty list becomes a float64 array, and "at least one" is the point
    if keep.size == 0:
        raise ArgumentError(f"keep: expected at least one of the {n} outputs of {layer!r}; "
                            f"removing all of them would cut the network")
    if keep.dtype.kind not in "iu":
        raise DTypeError(f"keep: expected integer indices, got dtype {keep.dtype.name}")
    keep = np.sort(keep.astype(np.int64))
    if keep[0] < 0 or keep[-1] >= n or np.any(np.diff(keep) == 0):
        raise ArgumentError(f"keep: expected unique indices in [0, {n}), got {keep.tolist()}")
    c = model.get_submodule(link.consumer)
    if link.flatten:
        s = c.in_features // n
        if isinstance(p, Linear):
            # channels last: Flatten puts output k of position s at s * n + k
            cols = (np.arange(s)[:, None] * n + keep[None, :]).reshape(-1)
        else:
            cols = (keep[:, None] * s + np.arange(s)[None, :]).reshape(-1)
    else:
        cols = keep
    model.set_submodule(layer, _rebuild(p, rows=keep))
    for bn in link.norms:
        model.set_submodule(bn, _rebuild_norm(model.get_submodule(bn), keep))
    model.set_submodule(link.consumer, _rebuild(c, cols=cols))
    return model
