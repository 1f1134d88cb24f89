"""Replacing chosen layers of a model in place, by module name.

    plan = {"0": {"rank": 32}, "2": {"energy": 0.9},          # Linear -> LowRankLinear
            "features.0": {"method": "tucker2", "ranks": (8, 16)},
            "features.3": {"method": "cp", "rank": 24}}
    replaced = factorize(model, plan)        # {name: original layer}

Every entry is checked (the name exists, the layer type fits the method, the arguments are
valid) and every decomposition is computed before the first layer is swapped, so a bad
plan leaves the model untouched.
"""

from __future__ import annotations

import inspect

from ..errors import ArgumentError, DTypeError
from ..nn import Conv2d, Linear, Module
from .layers import CPConv2d, LowRankLinear, Tucker2Conv2d

__all__ = ["decompose", "factorize", "replace_layers", "to_dense"]


def decompose(layer, method: str | None = None, **kwargs) -> Module:
    """The factored replacement of one trained layer.

    Linear -> :class:`LowRankLinear` (method ``"svd"``, the default; kwargs of
    :meth:`LowRankLinear.from_linear`); Conv2d -> :class:`Tucker2Conv2d` (``"tucker2"``, the
    default) or :class:`CPConv2d` (``"cp"``), kwargs of their ``from_conv``.  Keyword
    arguments the chosen constructor does not take (or a required one missing) are an
    ArgumentError listing the accepted ones.
    """
    return _decompose(layer, method, kwargs, "kwargs")


def _decompose(layer, method, kwargs, where):
    if isinstance(layer, Linear):
        if method not in (None, "svd"):
            raise ArgumentError(f"method: a Linear layer is factored by 'svd', got {method!r}")
        build, kind = LowRankLinear.from_linear, "a Linear factored by 'svd'"
    elif isinstance(layer, Conv2d):
        if method in (None, "tucker2"):
            build, kind = Tucker2Conv2d.from_conv, "a Conv2d factored by 'tucker2'"
        elif method == "cp":
            build, kind = CPConv2d.from_conv, "a Conv2d factored by 'cp'"
        else:
            raise ArgumentError(f"method: a Conv2d layer is factored by 'tucker2' or 'cp', got {method!r}")
    else:
        raise DTypeError(f"layer: expected refcompress.nn.Linear or Conv2d, got {type(layer).__name__}")
    _check_keys(build, kwargs, where, kind)
    return build(layer, **kwargs)


def _check_keys(build, kwargs, where, kind):
    """Refuse keys ``build`` (a from_* constructor) does not take, and missing required
    ones, before calling it: a plan written for another layer type (``{"rank": 2}`` for a
    conv, whose Tucker-2 takes ``ranks``) would otherwise be Python's TypeError."""
    params = list(inspect.signature(build).parameters.values())[1:]  # after the layer
    accepted = [p.name for p in params]
    unknown = [k for k in kwargs if k not in accepted]
    missing = [p.name for p in params if p.default is inspect.Parameter.empty and p.name not in kwargs]
    if unknown or missing:
        what = f"unknown keys {unknown}" if unknown else f"missing keys {missing}"
        raise ArgumentError(f"{where}: {what} for {kind}; accepted keys: {['method'] + accepted}")


def replace_layers(model: Module, new_layers: dict) -> dict:
    """Put ``new_layers`` (dotted name -> Module) into ``model``; returns name -> old layer."""
    if not isinstance(model, Module):
        raise DTypeError(f"model: expected a refcompress.nn.Module, got {type(model).__name__}")
    if not hasattr(new_layers, "items"):
        raise DTypeError(f"new_layers: expected a mapping name -> Module, got {type(new_layers).__name__}")
    old = {}
    for name, layer in new_layers.items():
        if not name:
            raise ArgumentError("new_layers: cannot replace the model itself (name '')")
        old[name] = model.get_submodule(name)  # raises for an unknown name
        if not isinstance(layer, Module):
            raise DTypeError(f"new_layers[{name!r}]: expected a Module, got {type(layer).__name__}")
    for name, layer in new_layers.items():
        model.set_submodule(name, layer)
    return old


def factorize(model: Module, plan: dict) -> dict:
    """Decompose the layers named in ``plan`` (name -> kwargs of :func:`decompose`, which
    may include ``method``) and swap them into ``model`` in place.  Returns name -> the
    original layer.  All decompositions run before any layer is replaced."""
    if not hasattr(plan, "items") or not plan:
        raise ArgumentError("plan: expected a non-empty mapping layer name -> decomposition kwargs")
    new = {}
    for name, kw in plan.items():
        if not isinstance(kw, dict):
            raise DTypeError(f"plan[{name!r}]: expected a dict of decomposition arguments, got {type(kw).__name__}")
        layer = model.get_submodule(name)
        kw = dict(kw)
        new[name] = _decompose(layer, kw.pop("method", None), kw, f"plan[{name!r}]")
    return replace_layers(model, new)


def to_dense(model: Module) -> dict:
    """Multiply every factored layer of ``model`` back into one dense layer, in place
    (for checking a factored model against its dense equivalent).  Returns name -> the
    factored layer that was replaced."""
    factored = {name: m for name, m in model.named_modules()
                if isinstance(m, (LowRankLinear, Tucker2Conv2d, CPConv2d)) and name}
    return replace_layers(model, {name: m.to_dense() for name, m in factored.items()})
