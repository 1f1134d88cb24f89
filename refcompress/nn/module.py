"""Module and Parameter: explicit forward and backward, PyTorch-shaped state.

A :class:`Module` computes ``y = forward(x)`` and, given dL/dy, ``backward(grad_out)``
returns dL/dx and *adds* dL/dθ into each parameter's ``.grad``.  There is no autograd
graph: in training mode ``forward`` caches what its own backward needs (the input, a mask,
a patch matrix), and ``backward`` uses the cache of the *last* forward.  In eval mode
nothing is cached, so inference keeps no activations alive and ``backward`` refuses to run.

Attributes are registered the PyTorch way: assigning a :class:`Parameter` or a Module to an
attribute records it, ``register_buffer`` records a non-trained array (running statistics),
and the dotted names of :meth:`Module.state_dict` (``"0.weight"``, ``"3.running_mean"``)
are PyTorch's, so state dicts move between the two by name.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Callable, Iterator, NamedTuple

import numpy as np

from .._validation import check_array
from ..errors import ArgumentError, DTypeError, RefcompressError, ShapeError

__all__ = ["Parameter", "HookHandle", "Module", "IncompatibleKeys", "TrainingModes", "training_modes"]


class HookHandle:
    """Returned by every ``register_*_hook``; :meth:`remove` unregisters the hook."""

    _next_id = 0

    def __init__(self, hooks: "OrderedDict[int, Callable]"):
        self._hooks = hooks
        self.id = HookHandle._next_id
        HookHandle._next_id += 1

    def remove(self) -> None:
        self._hooks.pop(self.id, None)


class Parameter:
    """A trained array: ``data`` (ndarray), ``grad`` (ndarray of the same shape, or None).

    Two hook lists let other packages act on training without touching the optimizer:

    * grad hooks, ``fn(grad) -> grad``: an optimizer's ``step`` passes ``.grad`` through
      them in registration order before the update and stores the result back in
      ``.grad`` (pruning multiplies by its mask so pruned weights receive no update;
      returning None keeps the gradient unchanged).  The result must be an array of the
      parameter's shape (ShapeError naming the hook otherwise); it is cast to the
      parameter's dtype, so the hook never changes the parameter's dtype;
    * post-step hooks, ``fn(param) -> None``: run after the update of this parameter
      (pruning re-applies its mask, undoing weight decay or momentum drift).
    """

    def __init__(self, data):
        data = check_array(data, "data")
        if data.dtype.kind != "f":
            raise DTypeError(f"data: expected a floating dtype, got {data.dtype.name}")
        self.data = data
        self.grad = None
        self._grad_hooks: OrderedDict[int, Callable] = OrderedDict()
        self._post_step_hooks: OrderedDict[int, Callable] = OrderedDict()

    @property
    def shape(self) -> tuple:
        return self.data.shape

    @property
    def dtype(self) -> np.dtype:
        return self.data.dtype

    @property
    def size(self) -> int:
        return self.data.size

    def accumulate_grad(self, g: np.ndarray) -> None:
        """``grad += g`` (``grad = g`` copy when it is None): backward passes sum up."""
        if self.grad is None:
            self.grad = np.array(g, dtype=self.data.dtype, copy=True)
        else:
            self.grad += g

    def register_grad_hook(self, fn: Callable) -> HookHandle:
        """Add ``fn(grad) -> grad`` applied by optimizers before an update."""
        h = HookHandle(self._grad_hooks)
        self._grad_hooks[h.id] = fn
        return h

    def register_post_step_hook(self, fn: Callable) -> HookHandle:
        """Add ``fn(param)`` called by optimizers after this parameter is updated."""
        h = HookHandle(self._post_step_hooks)
        self._post_step_hooks[h.id] = fn
        return h

    @property
    def grad_hooks(self) -> list:
        return list(self._grad_hooks.values())

    @property
    def post_step_hooks(self) -> list:
        return list(self._post_step_hooks.values())

    def hooked_grad(self):
        """``.grad`` passed through the grad hooks (stored back), or None if there is none."""
        g = self.grad
        if g is None:
            return None
        for i, fn in enumerate(self._grad_hooks.values()):
            r = fn(g)
            if r is not None:
                g = self._checked_hook_result(r, i, fn)
        self.grad = g
        return g

    def _checked_hook_result(self, r, i, fn):
        """A grad hook's result must be a real array of the parameter's shape; it is cast
        to the parameter's dtype (a float64 mask times a float32 grad is float64)."""
        what = f"grad hook {i} ({getattr(fn, '__qualname__', type(fn).__name__)})"
        if isinstance(r, np.generic):  # NumPy arithmetic on a 0-d grad returns a scalar
            r = np.asarray(r)
        if not isinstance(r, np.ndarray):
            raise DTypeError(f"{what}: expected it to return a numpy.ndarray or None, got {type(r).__name__}")
        if r.shape != self.data.shape:
            raise ShapeError(f"{what}: expected it to return the parameter's shape {self.data.shape}, "
                             f"got {r.shape}")
        if r.dtype.kind not in "biuf":
            raise DTypeError(f"{what}: expected it to return a real array, got dtype {r.dtype.name}")
        return r.astype(self.data.dtype, copy=False)

    def run_post_step_hooks(self) -> None:
        for fn in list(self._post_step_hooks.values()):
            fn(self)

    def __repr__(self) -> str:
        return f"Parameter(shape={self.shape}, dtype={self.dtype.name})"


class IncompatibleKeys(NamedTuple):
    missing_keys: list
    unexpected_keys: list


class Module:
    """Base class of every layer and container.

    Subclasses call ``super().__init__()`` first, assign Parameters / sub-Modules as
    attributes, and implement ``forward(x)`` and ``backward(grad_out) -> grad_in``.  Calling
    the module runs ``forward`` and then the forward hooks.  ``get_config()`` returns the
    JSON-serialisable constructor keyword arguments (see :mod:`refcompress.nn.spec`).
    """

    #: The one floating dtype this layer computes in, or None when :meth:`to` may cast it.
    #: Deployment layers (integer and sparse kernels, float32 scales) set ``np.float32``.
    fixed_float_dtype = None

    def __init__(self):
        object.__setattr__(self, "_parameters", OrderedDict())
        object.__setattr__(self, "_buffers", OrderedDict())
        object.__setattr__(self, "_modules", OrderedDict())
        object.__setattr__(self, "_forward_hooks", OrderedDict())
        object.__setattr__(self, "training", True)

    # -- attribute registration ------------------------------------------------------
    def _registries(self):
        d = self.__dict__
        if "_parameters" not in d:
            raise RefcompressError(
                f"{type(self).__name__}: call Module.__init__() before assigning attributes")
        return d["_parameters"], d["_buffers"], d["_modules"]

    def __setattr__(self, name, value):
        if isinstance(value, (Parameter, Module)):
            params, buffers, modules = self._registries()
            for reg in (params, buffers, modules):
                reg.pop(name, None)
            self.__dict__.pop(name, None)
            (params if isinstance(value, Parameter) else modules)[name] = value
            return
        d = self.__dict__
        if "_buffers" in d and name in d["_buffers"]:
            if value is not None and not isinstance(value, np.ndarray):
                raise DTypeError(f"{name}: expected a numpy.ndarray for buffer, got {type(value).__name__}")
            d["_buffers"][name] = value
            return
        if "_parameters" in d:
            d["_parameters"].pop(name, None)
            d["_modules"].pop(name, None)
        object.__setattr__(self, name, value)

    def __getattr__(self, name):
        d = self.__dict__
        for key in ("_parameters", "_buffers", "_modules"):
            reg = d.get(key)
            if reg is not None and name in reg:
                return reg[name]
        raise AttributeError(f"{type(self).__name__} has no attribute {name!r}")

    def __delattr__(self, name):
        d = self.__dict__
        for key in ("_parameters", "_buffers", "_modules"):
            reg = d.get(key)
            if reg is not None and name in reg:
                del reg[name]
                return
        object.__delattr__(self, name)

    def register_buffer(self, name: str, value) -> None:
        """Record ``value`` (ndarray) as state that is saved but not trained."""
        value = check_array(value, name)
        params, buffers, modules = self._registries()
        if name in params or name in modules:
            raise ArgumentError(f"name: {name!r} is already a parameter or a submodule")
        self.__dict__.pop(name, None)
        buffers[name] = value

    # -- forward, backward, hooks ----------------------------------------------------
    def forward(self, x):
        raise NotImplementedError(f"{type(self).__name__} does not implement forward")

    def backward(self, grad_out):
        raise NotImplementedError(f"{type(self).__name__} does not implement backward")

    def __call__(self, *inputs, **kwargs):
        out = self.forward(*inputs, **kwargs)
        for fn, with_kwargs in list(self._forward_hooks.values()):
            r = fn(self, inputs, kwargs, out) if with_kwargs else fn(self, inputs, out)
            if r is not None:
                out = r
        return out

    def register_forward_hook(self, fn: Callable, *, with_kwargs: bool = False) -> HookHandle:
        """Add ``fn(module, inputs, output)``, run after each call's forward.

        ``inputs`` is the tuple of positional call arguments; keyword arguments
        (``attention(x, attention_mask=m)``) go to ``forward`` but not to the hook, as in
        PyTorch.  With ``with_kwargs=True`` the hook is ``fn(module, inputs, kwargs,
        output)`` and also receives the dict of keyword arguments.  A hook that returns a
        value replaces the output seen by later hooks and by the caller; ``backward`` is not
        affected (it still differentiates ``forward``), which is the straight-through rule
        when a hook fake-quantizes an activation.
        """
        if not isinstance(with_kwargs, (bool, np.bool_)):
            raise DTypeError(f"with_kwargs: expected a bool, got {type(with_kwargs).__name__}")
        h = HookHandle(self._forward_hooks)
        self._forward_hooks[h.id] = (fn, bool(with_kwargs))
        return h

    def _cache_or_raise(self, name: str = "_cache"):
        cache = self.__dict__.get(name)
        if cache is None:
            raise RefcompressError(
                f"{type(self).__name__}.backward: no cached forward; run forward in training "
                f"mode (module.train()) before backward")
        return cache

    def _check_grad_out(self, grad_out, shape):
        return check_array(grad_out, "grad_out", shape=tuple(shape))

    # -- traversal -------------------------------------------------------------------
    def named_children(self) -> Iterator[tuple[str, "Module"]]:
        yield from self._modules.items()

    def children(self) -> Iterator["Module"]:
        for _, m in self.named_children():
            yield m

    def named_modules(self, prefix: str = "", _memo=None) -> Iterator[tuple[str, "Module"]]:
        """Every module in the tree once (self first, name ""), depth first, dotted names."""
        memo = set() if _memo is None else _memo
        if id(self) in memo:
            return
        memo.add(id(self))
        yield prefix, self
        for name, child in self._modules.items():
            yield from child.named_modules(f"{prefix}.{name}" if prefix else name, memo)

    def modules(self) -> Iterator["Module"]:
        for _, m in self.named_modules():
            yield m

    def _module_paths(self, prefix: str = "", _ancestors=None) -> Iterator[tuple[str, "Module"]]:
        """Every (dotted path, module) pair, depth first: a module reachable by two paths
        (``Sequential(l, ReLU(), l)``) is listed under both, as PyTorch's state_dict does.
        A module that contains itself is an error."""
        ancestors = set() if _ancestors is None else _ancestors
        if id(self) in ancestors:
            raise RefcompressError(f"{type(self).__name__} at {prefix!r} contains itself")
        ancestors.add(id(self))
        yield prefix, self
        for name, child in self._modules.items():
            yield from child._module_paths(f"{prefix}.{name}" if prefix else name, ancestors)
        ancestors.discard(id(self))

    def _named_members(self, attr: str, recurse: bool):
        seen = set()
        mods = self.named_modules() if recurse else [("", self)]
        for prefix, m in mods:
            for name, v in m.__dict__[attr].items():
                if v is None or id(v) in seen:
                    continue
                seen.add(id(v))
                yield (f"{prefix}.{name}" if prefix else name), v

    def named_parameters(self, recurse: bool = True) -> Iterator[tuple[str, Parameter]]:
        """(dotted name, Parameter) pairs, each shared Parameter once."""
        yield from self._named_members("_parameters", recurse)

    def parameters(self, recurse: bool = True) -> Iterator[Parameter]:
        for _, p in self.named_parameters(recurse):
            yield p

    def named_buffers(self, recurse: bool = True) -> Iterator[tuple[str, np.ndarray]]:
        yield from self._named_members("_buffers", recurse)

    def get_submodule(self, target: str) -> "Module":
        """The module at dotted path ``target`` ("" is self)."""
        m = self
        for part in filter(None, target.split(".")):
            if part not in m._modules:
                raise ArgumentError(f"target: no submodule {target!r} ({part!r} missing)")
            m = m._modules[part]
        return m

    def get_submodules(self, names, what: str = "names") -> "OrderedDict[str, Module]":
        """The modules at the dotted paths ``names`` (a list of distinct str, each naming a
        different module), in order.  Errors name the argument ``what``."""
        if isinstance(names, str) or not hasattr(names, "__iter__"):
            raise DTypeError(f"{what}: expected a list of dotted module names, got {type(names).__name__}")
        names = list(names)
        if len(set(names)) != len(names):
            raise ArgumentError(f"{what}: expected distinct module names, got {names}")
        found, seen = OrderedDict(), {}
        for n in names:
            if not isinstance(n, str):
                raise DTypeError(f"{what}: expected str module names, got {type(n).__name__} {n!r}")
            try:
                m = self.get_submodule(n)
            except ArgumentError:
                known = [k for k, _ in self.named_modules()]
                raise ArgumentError(f"{what}: model has no submodule {n!r}; it has {known}") from None
            if id(m) in seen:
                raise ArgumentError(f"{what}: {n!r} and {seen[id(m)]!r} are the same module")
            seen[id(m)] = n
            found[n] = m
        return found

    def set_submodule(self, target: str, module: "Module") -> None:
        """Replace the module at dotted path ``target`` (layer surgery: pruning, low rank)."""
        if not isinstance(module, Module):
            raise DTypeError(f"module: expected a Module, got {type(module).__name__}")
        parent, _, name = target.rpartition(".")
        owner = self.get_submodule(parent)
        if name not in owner._modules:
            raise ArgumentError(f"target: no submodule {target!r}")
        owner._modules[name] = module

    # -- state -----------------------------------------------------------------------
    def state_dict(self) -> "OrderedDict[str, np.ndarray]":
        """Copies of every parameter and buffer array, keyed by dotted name.

        As in PyTorch, a module (or Parameter) reachable by several paths is listed under
        each of them (``Sequential(l, ReLU(), l)`` has "0.weight" and "2.weight"), with
        equal values; :meth:`parameters` still yields it once."""
        sd = OrderedDict()
        for prefix, m in self._module_paths():
            for name, p in m._parameters.items():
                sd[f"{prefix}.{name}" if prefix else name] = p.data.copy()
            for name, b in m._buffers.items():
                if b is not None:
                    sd[f"{prefix}.{name}" if prefix else name] = b.copy()
        return sd

    def load_state_dict(self, state_dict, strict: bool = True) -> IncompatibleKeys:
        """Copy arrays from ``state_dict`` into this module's parameters and buffers.

        Shapes and dtypes must match exactly (nothing is cast: a float64 checkpoint for a
        float32 model is an error, call ``to`` first).  With ``strict`` missing and
        unexpected keys are errors; otherwise they are returned.  Nothing is written
        unless every key checks out.

        Each loaded Parameter's post-step hooks then run (once per Parameter), as after an
        optimizer step: a load updates the parameter like a step does, so constraints kept
        by such hooks (e.g. pruning masks, W <- W * M) hold for the loaded values too.

        A module or Parameter reachable by several paths (see :meth:`state_dict`) accepts
        its value under any of them; when two of its paths are given they must carry equal
        values (ArgumentError otherwise).  A path is missing only when none of the paths of
        its array is given, so a state dict listing a shared module once still loads.
        """
        if not hasattr(state_dict, "items"):
            raise DTypeError(f"state_dict: expected a mapping, got {type(state_dict).__name__}")
        targets, aliases = {}, {}
        for prefix, m in self._module_paths():
            for reg in ("_parameters", "_buffers"):
                for name, v in m.__dict__[reg].items():
                    if v is not None:
                        key = f"{prefix}.{name}" if prefix else name
                        targets[key] = (m, reg, name)
                        # one identity per stored array: the Parameter, or the buffer slot
                        ident = ("p", id(v)) if reg == "_parameters" else ("b", id(m), name)
                        aliases.setdefault(ident, []).append(key)
        given = {k: ident for ident, keys in aliases.items() for k in keys}
        covered = {given[k] for k in targets if k in state_dict}
        missing = [k for k in targets if given[k] not in covered]
        unexpected = [k for k in state_dict if k not in targets]
        if strict and (missing or unexpected):
            raise ArgumentError(
                f"state_dict: missing keys {missing}, unexpected keys {unexpected}")
        updates, checked = [], {}
        for key, (m, reg, name) in targets.items():
            if key not in state_dict:
                continue
            cur = m.__dict__[reg][name]
            cur = cur.data if isinstance(cur, Parameter) else cur
            new = check_array(state_dict[key], f"state_dict[{key!r}]")
            if new.shape != cur.shape:
                raise ShapeError(f"state_dict[{key!r}]: expected shape {cur.shape}, got {new.shape}")
            if new.dtype != cur.dtype:
                raise DTypeError(
                    f"state_dict[{key!r}]: expected dtype {cur.dtype.name}, got {new.dtype.name}")
            updates.append((m, reg, name, new, given[key], cur))
            checked[key] = new
        # The paths of one shared array must agree, except that an edit of one path wins:
        # a state dict taken, changed at "0.weight" and loaded back still holds the old
        # value at "2.weight" (PyTorch would keep whichever path it loads last).
        chosen = {}
        for m, reg, name, new, ident, cur in updates:
            if ident not in chosen:
                keys = [a for a in aliases[ident] if a in state_dict]
                vals = [checked[a] for a in keys]  # each checked once, above
                nan = new.dtype.kind in "fc"
                pick = vals[0]
                if any(not np.array_equal(v, pick, equal_nan=nan) for v in vals[1:]):
                    edits = [(a, v) for a, v in zip(keys, vals) if not np.array_equal(v, cur, equal_nan=nan)]
                    if any(not np.array_equal(v, edits[0][1], equal_nan=nan) for _, v in edits[1:]):
                        raise ArgumentError(
                            f"state_dict: {', '.join(repr(a) for a, _ in edits)} name the same array "
                            f"(a shared module or parameter) but carry different new values")
                    pick = edits[0][1]
                chosen[ident] = pick
        updates = [(m, reg, name, chosen[ident]) for m, reg, name, _, ident, _ in updates]
        loaded = {}
        for m, reg, name, new in updates:
            if reg == "_parameters":
                m._parameters[name].data = np.array(new, copy=True, order="C")
                loaded[id(m._parameters[name])] = m._parameters[name]
            else:
                m._buffers[name] = np.array(new, copy=True, order="C")
        # After every value is in place: a hook may read other state of its module (a
        # pruning mask zeroes weights of a checkpoint saved before the mask was raised).
        for p in loaded.values():
            p.run_post_step_hooks()
        return IncompatibleKeys(missing, unexpected)

    def train(self, mode: bool = True) -> "Module":
        for m in self.modules():
            object.__setattr__(m, "training", bool(mode))
        return self

    def eval(self) -> "Module":
        return self.train(False)

    def zero_grad(self) -> None:
        """Set every parameter's ``.grad`` to None (the next backward starts from zero)."""
        for p in self.parameters():
            p.grad = None

    def to(self, dtype) -> "Module":
        """Cast floating parameters (and their grads) and floating buffers to ``dtype``.

        A layer whose ``fixed_float_dtype`` is set (the deployment forms: quantized,
        weight-only, dynamic, sparse, N:M and int8 factored layers, whose kernels and stored
        scales are float32) computes in that dtype only: casting a model that holds one to
        another dtype raises DTypeError naming the layer, and nothing is cast.
        """
        dt = np.dtype(dtype)
        if dt.kind != "f":
            raise DTypeError(f"dtype: expected a floating dtype, got {dt.name}")
        for name, m in self.named_modules():
            fixed = m.fixed_float_dtype
            if fixed is not None and dt != fixed:
                where = f"{name!r} ({type(m).__name__})" if name else type(m).__name__
                raise DTypeError(f"dtype: {where} computes in {np.dtype(fixed).name} only (its kernels and "
                                 f"stored scales are {np.dtype(fixed).name}), got {dt.name}; nothing was cast. "
                                 f"Cast the float model before converting it")
        for m in self.modules():
            for p in m._parameters.values():
                p.data = p.data.astype(dt)
                if p.grad is not None:
                    p.grad = p.grad.astype(dt)
            for name, b in m._buffers.items():
                if b is not None and b.dtype.kind == "f":
                    m._buffers[name] = b.astype(dt)
            m.__dict__.pop("_cache", None)
        return self

    def get_config(self) -> dict:
        """JSON-serialisable constructor keyword arguments (none for the base class)."""
        return {}

    @classmethod
    def from_config(cls, config: dict, children: dict) -> "Module":
        """Build ``cls(**config)`` and put ``children`` (name -> Module) in place.

        A child replaces the constructor's child of the same name (keeping its position),
        or is appended when the constructor made none; a constructor child the spec does
        not list is an error.  :func:`refcompress.nn.from_spec` calls this.
        """
        module = cls(**config)
        extra = [k for k in module._modules if k not in children]
        if extra:
            raise ArgumentError(
                f"spec: {cls.__name__} builds children {extra} that the spec does not list")
        for name, child in children.items():
            if name in module._modules:
                module._modules[name] = child
            else:
                setattr(module, name, child)
        return module

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        if not self._modules:
            return f"{type(self).__name__}({args})"
        lines = [f"{type(self).__name__}({args})(" if args else f"{type(self).__name__}("]
        for name, child in self._modules.items():
            body = repr(child).replace("\n", "\n  ")
            lines.append(f"  ({name}): {body}")
        return "\n".join(lines) + "\n)"


class TrainingModes:
    """The ``training`` flag of every module in a tree, saved so it can be put back.

    ``module.train(mode)`` sets *every* submodule's flag, so restoring only the root's flag
    afterwards would unfreeze a submodule the caller had put in eval mode (a frozen
    BatchNorm in a training model).  Use it as a context manager::

        with training_modes(model):
            model.eval()
            ...                 # on exit each module gets back its own flag

    or call :meth:`restore` yourself.
    """

    def __init__(self, module: "Module"):
        if not isinstance(module, Module):
            raise DTypeError(f"module: expected a Module, got {type(module).__name__}")
        self.module = module
        self._modes = [(m, m.training) for m in module.modules()]

    def restore(self) -> None:
        """Give every saved module back the flag it had when this object was made."""
        for m, mode in self._modes:
            object.__setattr__(m, "training", mode)

    def __enter__(self) -> "TrainingModes":
        return self

    def __exit__(self, *exc) -> None:
        self.restore()


def training_modes(module: "Module") -> TrainingModes:
    """Save the ``training`` flag of every module in ``module``'s tree (see
    :class:`TrainingModes`); a context manager that restores them on exit."""
    return TrainingModes(module)
