"""Sequential: a chain of modules named "0", "1", ... (PyTorch's state-dict names).

forward:  y = f_{n-1}( ... f_1(f_0(x)))
backward: dL/dx = b_0(b_1( ... b_{n-1}(dL/dy)))   (each child's backward, in reverse)
"""

from __future__ import annotations

import numbers

from .._validation import check_int
from ..errors import ArgumentError, DTypeError
from .module import Module
from .spec import register_module

__all__ = ["Sequential"]


def _check_module(m, name):
    if not isinstance(m, Module):
        raise DTypeError(f"{name}: expected a Module, got {type(m).__name__}")
    return m


class Chain(Module):
    """Base of modules whose children run in registration order: forward applies them in
    turn, backward runs their backwards in reverse (the chain rule through a composition)."""

    def forward(self, x):
        for m in self._modules.values():
            x = m(x)
        return x

    def backward(self, grad_out):
        for m in reversed(list(self._modules.values())):
            grad_out = m.backward(grad_out)
        return grad_out


@register_module
class Sequential(Chain):
    """``Sequential(m0, m1, ...)``; indexable (ints, negative ints, slices), ``len``,
    iterable, ``append``, and ``seq[i] = module`` to replace a layer in place."""

    def __init__(self, *modules):
        super().__init__()
        for m in modules:
            self.append(m)

    def append(self, module: Module) -> "Sequential":
        self._modules[str(len(self._modules))] = _check_module(module, "module")
        return self

    def __len__(self) -> int:
        return len(self._modules)

    def __iter__(self):
        return iter(list(self._modules.values()))

    def _index(self, idx) -> str:
        if isinstance(idx, bool) or not isinstance(idx, numbers.Integral):
            raise DTypeError(f"idx: expected an int or a slice, got {type(idx).__name__}")
        n = len(self)
        i = check_int(idx, "idx", min_value=-n, max_value=n - 1) if n else None
        if i is None:
            raise ArgumentError(f"idx: the Sequential is empty, got index {idx}")
        return str(i % n)

    def __getitem__(self, idx):
        if isinstance(idx, slice):
            return Sequential(*list(self._modules.values())[idx])
        return self._modules[self._index(idx)]

    def __setitem__(self, idx, module):
        self._modules[self._index(idx)] = _check_module(module, "module")

    @classmethod
    def from_config(cls, config, children):
        # Specs may pass through JSON writers that sort keys ("10" before "2"), so the
        # order comes from the numeric names, which must be exactly 0..n-1.
        try:
            order = sorted(children, key=int)
        except ValueError:
            raise ArgumentError(f"spec: Sequential children must be named 0..n-1, got {list(children)}") from None
        if order != [str(i) for i in range(len(order))]:
            raise ArgumentError(f"spec: Sequential children must be named 0..n-1, got {list(children)}")
        return cls(*(children[k] for k in order), **config)
