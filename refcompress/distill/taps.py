"""Taps: read the outputs of named inner modules, and feed a loss gradient back into them.

Distillation losses on intermediate features need two things from a model: the output of
an inner module on the last forward, and — for the student — a way to add dL/d(that
output) into the backward pass.  Neither model is copied or rebuilt:

* reading uses the toolkit's forward hooks (``register_forward_hook``); the hook keeps a
  reference to the output (no copy; nn layers never modify an output in place);
* injecting wraps the tapped module's ``backward`` with an instance attribute that adds
  the pending gradient to ``grad_out`` before calling the class's backward.  Containers
  call ``child.backward(...)``, so when the student's ordinary ``backward(dL/dlogits)``
  reaches the tapped module, its output gradient becomes dL_downstream/dy + dL_feature/dy,
  which is exactly the chain rule for a loss that reads y directly.  :meth:`Taps.remove`
  deletes the attribute, so the model is left as it was.

A pending gradient is dropped by the next forward (it belonged to the old output) and is
consumed by the first backward through the module; :meth:`Taps.unconsumed` lists those a
backward never reached (a custom container that does not call its children's backward),
which the trainer turns into an error rather than silently losing a loss term.
"""

from __future__ import annotations

import numpy as np

from .._validation import check_array
from ..errors import ArgumentError, DTypeError, RefcompressError
from ..nn import Module

__all__ = ["Taps"]


class Taps:
    """Tap the outputs of ``model``'s submodules named in ``names`` (dotted paths, as
    ``model.named_modules()``; ``""`` is the model itself).

    >>> taps = Taps(student, ["0", "3"], inject=True)   # attached on construction
    >>> logits = student(x); f = taps["3"]             # output of module "3" this forward
    >>> taps.add_grad("3", dL_df); student.backward(dL_dlogits)   # dL_df enters at "3"
    >>> taps.remove()                                   # or use ``with Taps(...) as taps``

    inject : wrap the tapped modules' backward so :meth:`add_grad` works (student side).
    what   : the argument name that errors about ``names`` report (default "names").
    """

    def __init__(self, model: Module, names, *, inject: bool = False, what: str = "names"):
        if not isinstance(model, Module):
            raise DTypeError(f"model: expected an nn Module, got {type(model).__name__}")
        modules = dict(model.get_submodules(names, what=what))
        self.model = model
        self.names = list(modules)
        self.inject = bool(inject)
        self._modules = modules
        self._outputs: dict[str, np.ndarray] = {}
        self._pending: dict[str, np.ndarray] = {}
        self._handles = []
        self._wrappers = {}
        self.attached = False
        self.attach()

    # -- lifecycle ---------------------------------------------------------------------
    def attach(self) -> "Taps":
        """Register the hooks (and backward wrappers); done by the constructor."""
        if self.attached:
            return self
        for name, m in self._modules.items():
            self._handles.append(m.register_forward_hook(self._make_hook(name)))
            if self.inject:
                prev = m.__dict__.get("backward")
                w = self._make_backward(name, m, prev)
                object.__setattr__(m, "backward", w)
                self._wrappers[name] = (w, prev)
        self.attached = True
        return self

    def remove(self) -> None:
        """Unregister the hooks, restore each module's own backward, drop stored arrays."""
        if not self.attached:
            return
        for name, (w, _) in self._wrappers.items():
            m = self._modules[name]
            if m.__dict__.get("backward") is not w:
                raise RefcompressError(
                    f"Taps.remove: the backward of {name!r} was re-wrapped after this tap; "
                    f"remove taps in the reverse order of attaching them")
        for h in self._handles:
            h.remove()
        for name, (_, prev) in self._wrappers.items():
            if prev is None:
                self._modules[name].__dict__.pop("backward", None)
            else:
                object.__setattr__(self._modules[name], "backward", prev)
        self._handles, self._wrappers = [], {}
        self._outputs.clear()
        self._pending.clear()
        self.attached = False

    def __enter__(self) -> "Taps":
        return self.attach()

    def __exit__(self, *exc) -> None:
        self.remove()

    # -- the hooks ---------------------------------------------------------------------
    def _make_hook(self, name):
        def hook(module, inputs, output):
            self._outputs[name] = output
            self._pending.pop(name, None)
        return hook

    def _make_backward(self, name, module, prev):
        # prev: an instance-level backward set before us (another Taps); chain through it.
        own = prev if prev is not None else type(module).backward.__get__(module)

        def backward(grad_out):
            extra = self._pending.pop(name, None)
            if extra is not None:
                grad_out = grad_out + extra
            return own(grad_out)
        return backward

    # -- reading and injecting ---------------------------------------------------------
    def read(self, name: str | None = None):
        """The output of tapped module ``name`` on the last forward (dict of all if None)."""
        if name is None:
            missing = [n for n in self.names if n not in self._outputs]
            if missing:
                raise RefcompressError(f"Taps.read: {missing} have not run a forward since attach")
            return {n: self._outputs[n] for n in self.names}
        if name not in self._modules:
            raise ArgumentError(f"name: expected one of the tapped names {self.names}, got {name!r}")
        if name not in self._outputs:
            raise RefcompressError(f"Taps.read: {name!r} has not run a forward since attach")
        return self._outputs[name]

    def __getitem__(self, name: str):
        return self.read(name)

    def add_grad(self, name: str, grad) -> None:
        """Add ``grad`` (dL/d output of ``name``, the last output's shape and dtype) to what
        the next backward through that module receives.  Calls for one name accumulate."""
        if not self.inject:
            raise RefcompressError("Taps.add_grad: this Taps was built with inject=False (read only)")
        out = self.read(name)
        g = check_array(grad, "grad", dtypes=(out.dtype,), shape=out.shape)
        prev = self._pending.get(name)
        self._pending[name] = g if prev is None else prev + g

    def unconsumed(self) -> list:
        """Names whose added gradient no backward has taken yet."""
        return [n for n in self.names if n in self._pending]

    def clear(self) -> None:
        """Forget stored outputs and pending gradients (hooks stay attached)."""
        self._outputs.clear()
        self._pending.clear()

    def __repr__(self) -> str:
        state = "attached" if self.attached else "removed"
        return f"Taps({type(self.model).__name__}, {self.names}, inject={self.inject}, {state})"
