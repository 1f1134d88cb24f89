"""Architecture as data: module specs and the layer registry.

A spec is the nested, JSON-serialisable dict

    {"type": "<registered class name>", "config": {constructor kwargs}, "children": {name: spec}}

:func:`to_spec` writes it from a live module (``config`` is ``module.get_config()``) and
:func:`from_spec` rebuilds the module through the registry; weights travel separately in
the state dict, so ``from_spec(to_spec(m))`` followed by
``load_state_dict(m.state_dict())`` reproduces ``m`` exactly.

Other packages make their own layers loadable with the :func:`register_module` decorator.
Rebuilding calls ``cls.from_config(config, children)``; the default builds ``cls(**config)``
and then puts each child spec's module in place of the constructor's child of that name
(so a composite layer whose child was replaced, e.g. by a pruned or quantized layer,
comes back with the replacement), or adds it when the constructor made none (containers).
"""

from __future__ import annotations

import json

from ..errors import ArgumentError, DTypeError
from .module import Module

__all__ = ["register_module", "registered_modules", "to_spec", "from_spec"]

_REGISTRY: dict[str, type] = {}


def register_module(cls):
    """Class decorator: make ``cls`` buildable by :func:`from_spec` under ``cls.__name__``.

    Registering a different class under a name already taken is an error (a spec names
    its type by class name only); re-registering the same class (a module reload) is not.
    """
    if not (isinstance(cls, type) and issubclass(cls, Module)):
        raise DTypeError(f"cls: expected a Module subclass, got {cls!r}")
    name = cls.__name__
    old = _REGISTRY.get(name)
    if old is not None and old is not cls and (
            (old.__module__, old.__qualname__) != (cls.__module__, cls.__qualname__)):
        raise ArgumentError(
            f"cls: type name {name!r} is already registered by {old.__module__}.{old.__qualname__}")
    _REGISTRY[name] = cls
    return cls


def registered_modules() -> dict[str, type]:
    """A copy of the registry: type name -> class."""
    return dict(_REGISTRY)


def to_spec(module: Module, _path: str = "") -> dict:
    """The spec dict of ``module`` (see the module docstring)."""
    if not isinstance(module, Module):
        raise DTypeError(f"module: expected a Module, got {type(module).__name__}")
    name = type(module).__name__
    where = _path or "<root>"
    if _REGISTRY.get(name) is not type(module):
        raise ArgumentError(
            f"module: {where} is a {name}, which is not registered; decorate the class with "
            f"refcompress.nn.register_module")
    config = module.get_config()
    try:
        json.dumps(config)
    except (TypeError, ValueError) as e:
        raise ArgumentError(f"module: {where} ({name}).get_config() is not JSON-serialisable: {e}") from None
    children = {
        cname: to_spec(child, f"{_path}.{cname}" if _path else cname)
        for cname, child in module.named_children()
    }
    return {"type": name, "config": config, "children": children}


def from_spec(spec: dict) -> Module:
    """Build the module described by ``spec`` (freshly initialised; load weights after)."""
    if not isinstance(spec, dict) or "type" not in spec:
        raise ArgumentError(f"spec: expected a dict with 'type', 'config', 'children', got {spec!r:.80}")
    name = spec["type"]
    cls = _REGISTRY.get(name)
    if cls is None:
        raise ArgumentError(
            f"spec: unknown module type {name!r}; registered: {sorted(_REGISTRY)} (import the "
            f"package that registers it)")
    config = spec.get("config", {}) or {}
    children = {k: from_spec(v) for k, v in (spec.get("children", {}) or {}).items()}
    return cls.from_config(config, children)
