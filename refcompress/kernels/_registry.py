"""The kernel registry and the backend setting: the seam between NumPy reference and C.

Every op is one :class:`Op` record: its NumPy ``reference``, its C implementation (which
takes the ISA variant and thread count as its last two arguments), the ISA variants the C
side has, and its exactness (``tolerance == 0`` means bit-exact; otherwise a documented,
derived bound).  ``dispatch`` chooses the implementation from the current setting:

* ``"numpy"`` - always the reference;
* ``"c"``     - the C kernel, and an error (never a silent fallback) if it is not built or
  the requested ISA variant cannot run here;
* ``"auto"``  - C when built (best variant this CPU runs), else the reference with a single
  warning per process.

The process-wide setting comes from ``REFCOMPRESS_BACKEND`` / ``REFCOMPRESS_THREADS`` or
``set_backend`` / ``set_num_threads``; ``use(...)`` overrides it within a ``with`` block
(per thread / async task, through a ContextVar).  A block overrides only what it is given:
the rest follows the live surrounding setting, so ``set_num_threads`` (or ``set_backend``)
called inside ``with use("c"):`` takes effect inside the block too, while a block's own
``threads=`` (or backend / isa) wins over it.  An ISA variant applies to the C backend:
``set_backend("numpy", isa=...)``, ``use("numpy", isa=...)`` and ``use(isa=...)`` where the
backend in force is "numpy" raise ArgumentError.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import sys
import warnings
from dataclasses import dataclass, field
from typing import Callable

from .._validation import check_choice, check_int
from ..errors import ArgumentError, BackendError
from . import _native

BACKENDS = ("auto", "c", "numpy")


@dataclass(frozen=True)
class Op:
    """One kernel op: NumPy reference, C implementation, its ISA variants and exactness."""

    name: str
    reference: Callable
    c: Callable | None
    variants: tuple[str, ...]
    tolerance: float = 0.0
    tolerance_doc: str = "bit-exact"
    doc: str = ""
    extra: dict = field(default_factory=dict)


_REGISTRY: dict[str, Op] = {}


def register(op: Op) -> Op:
    if op.name in _REGISTRY:
        raise ArgumentError(f"op: {op.name!r} is already registered")
    unknown = set(op.variants) - set(_native.ISA_NAMES)
    if unknown:
        raise ArgumentError(f"op.variants: unknown ISA names {sorted(unknown)}")
    _REGISTRY[op.name] = op
    return op


def ops() -> dict[str, Op]:
    """All registered ops, by name."""
    return dict(_REGISTRY)


# ---- the setting -----------------------------------------------------------------------


@dataclass(frozen=True)
class Setting:
    backend: str
    isa: str | None
    threads: int | None


def _env_setting() -> Setting:
    backend = os.environ.get("REFCOMPRESS_BACKEND", "auto").strip().lower() or "auto"
    check_choice(backend, "REFCOMPRESS_BACKEND", BACKENDS)
    threads = os.environ.get("REFCOMPRESS_THREADS", "").strip()
    if threads:
        try:
            n = int(threads)
        except ValueError:
            raise ArgumentError(f"REFCOMPRESS_THREADS: expected a positive integer, got {threads!r}") from None
        threads = check_int(n, "REFCOMPRESS_THREADS", min_value=1)
    return Setting(backend, None, threads or None)


class _Layer:
    """A ``use(...)`` block: the fields it was given (None: follow the surrounding setting,
    ``parent`` or the process-wide one), composed over the live process-wide setting.  The
    composition is kept with the process-wide Setting object it was made from, so that
    :func:`current` returns the same object until ``set_backend`` / ``set_num_threads``
    make a new one (the kept dispatch decisions depend on that identity)."""

    __slots__ = ("parent", "backend", "isa", "threads", "cache")

    def __init__(self, parent, backend, isa, threads):
        self.parent, self.backend, self.isa, self.threads = parent, backend, isa, threads
        self.cache = (None, None)

    def compose(self) -> Setting:
        g = _global
        p = self.parent
        if p is None:
            outer = g
        else:
            c = p.cache
            outer = c[1] if c[0] is g else p.compose()
        backend = self.backend if self.backend is not None else outer.backend
        if self.isa is not None:
            isa = self.isa
        else:  # a block naming a backend starts from that backend's best variant
            isa = outer.isa if self.backend is None else None
        if backend == "numpy":
            isa = None  # (the process-wide backend set to numpy inside a block given an isa)
        threads = self.threads if self.threads is not None else outer.threads
        s = Setting(backend, isa, threads)
        old = self.cache[1]
        if old == s:
            s = old  # the same object while nothing changed
        self.cache = (g, s)
        return s


_global = _env_setting()
_override: contextvars.ContextVar[_Layer | None] = contextvars.ContextVar(
    "refcompress_kernel_setting", default=None
)
_warned_fallback = False


def current() -> Setting:
    """The setting in force for this thread / task (the same object while it does not change)."""
    o = _override.get()
    if o is None:
        return _global
    c = o.cache
    if c[0] is _global:
        return c[1]
    return o.compose()


def _check_isa(isa):
    if isa is not None:
        check_choice(isa, "isa", _native.ISA_NAMES)
    return isa


def _check_threads(threads):
    return None if threads is None else check_int(threads, "threads", min_value=1)


def set_backend(backend: str, isa: str | None = None) -> None:
    """Set the process-wide backend (``"auto" | "c" | "numpy"``) and optional ISA variant
    (not with "numpy": ArgumentError).  Seen inside ``use(...)`` blocks that do not name a
    backend of their own."""
    global _global
    check_choice(backend, "backend", BACKENDS)
    if isa is not None and backend == "numpy":
        raise ArgumentError("isa: an ISA variant applies to the 'c' backend, not 'numpy'")
    _global = Setting(backend, _check_isa(isa), _global.threads)


def get_backend() -> str:
    return current().backend


def set_num_threads(threads: int | None) -> None:
    """Threads the C kernels use (None: OpenMP's default, normally one per core).
    Process-wide, and seen inside ``use(...)`` blocks that do not set ``threads=`` themselves."""
    global _global
    _global = Setting(_global.backend, _global.isa, _check_threads(threads))


def get_num_threads() -> int:
    threads = current().threads
    if threads is not None:
        return threads
    return _native.lib.rc_max_threads() if _native.lib is not None else 1


@contextlib.contextmanager
def use(backend: str | None = None, isa: str | None = None, threads: int | None = None):
    """Force a backend, ISA variant and/or thread count inside a ``with`` block.

    ``use("c", isa="avx2")`` runs every op through its AVX2 variant and raises
    :class:`~refcompress.errors.BackendError` for an op that has none or a CPU that cannot
    run it; ``use("numpy")`` runs the references.  Arguments left as None follow the
    surrounding setting, live: ``set_num_threads`` / ``set_backend`` called inside the block
    change what the block runs unless the block set that field itself.  A block naming a
    backend but no ISA starts from that backend's best variant.  An ``isa`` where the backend
    in force is "numpy" (``use("numpy", isa=...)``, or ``use(isa=...)`` inside a numpy
    block or under ``set_backend("numpy")``) raises ArgumentError.  Yields the setting in
    force when the block starts.
    """
    outer = current()
    if backend is not None:
        check_choice(backend, "backend", BACKENDS)
    if isa is not None:
        _check_isa(isa)
        if (backend if backend is not None else outer.backend) == "numpy":
            raise ArgumentError("isa: an ISA variant applies to the 'c' backend, not 'numpy'"
                                + ("" if backend is not None else " (the backend in force here)"))
    layer = _Layer(_override.get(), backend, isa, _check_threads(threads))
    token = _override.set(layer)
    try:
        yield layer.compose()
    finally:
        _override.reset(token)


# ---- what is available -----------------------------------------------------------------


def runnable_isas() -> list[str]:
    """ISA variants both compiled into this build and supported by this CPU."""
    if _native.lib is None:
        return []
    lib = _native.lib
    return _native.mask_to_names(lib.rc_cpu_isa_mask() & lib.rc_compiled_isa_mask())


def variants(op_name: str) -> list[str]:
    """The C variants of ``op_name`` that can run here (empty without the C build)."""
    op = _get(op_name)
    if op.c is None:
        return []
    here = set(runnable_isas())
    return [v for v in op.variants if v in here]


def selected_variant(op_name: str) -> str | None:
    """The variant the current setting runs for ``op_name`` (None: the NumPy reference)."""
    op = _get(op_name)
    s = current()
    if s.backend == "numpy" or op.c is None or _native.lib is None:
        return None
    runnable = variants(op_name)
    if s.isa is not None:
        return s.isa if s.isa in runnable else None
    # the C resolver's own preference order, so that this answer is what "auto" runs
    best = _native.lib.rc_isa_best(_native.names_to_mask(runnable))
    return _native.ISA_NAMES[best] if best >= 0 else None


def available() -> dict:
    """What was built and what this CPU can run: a plain dict, printed by ``refcompress info``."""
    lib = _native.lib
    info = {
        "c_built": lib is not None,
        "c_error": _native.LOAD_ERROR,
        "openmp": bool(lib.rc_has_openmp()) if lib is not None else False,
        "sanitized": bool(lib.rc_is_sanitized()) if lib is not None else False,
        "max_threads": lib.rc_max_threads() if lib is not None else 1,
        "compiled_isas": _native.mask_to_names(lib.rc_compiled_isa_mask()) if lib is not None else [],
        "cpu_isas": _native.mask_to_names(lib.rc_cpu_isa_mask()) if lib is not None else [],
        "runnable_isas": runnable_isas(),
        "backend": current().backend,
        "isa": current().isa,
        "threads": get_num_threads(),
        "ops": {},
    }
    for name, op in sorted(_REGISTRY.items()):
        info["ops"][name] = {
            "variants": op.variants,
            "runnable": variants(name),
            "selected": selected_variant(name),
            "exactness": op.tolerance_doc,
        }
    return info


# ---- dispatch --------------------------------------------------------------------------


def _get(op_name: str) -> Op:
    try:
        return _REGISTRY[op_name]
    except KeyError:
        raise ArgumentError(f"op_name: expected one of {sorted(_REGISTRY)}, got {op_name!r}") from None


def _warn_fallback_once(reason: str) -> None:
    global _warned_fallback
    if not _warned_fallback:
        _warned_fallback = True
        warnings.warn(
            f"refcompress: C kernels unavailable ({reason}); running the NumPy reference. "
            "Reinstall with a C compiler for speed.",
            RuntimeWarning,
            stacklevel=_caller_stacklevel(),
        )


def _caller_stacklevel() -> int:
    """The ``stacklevel`` that points a warning raised here at the first frame outside
    refcompress: ops reach the fallback through different depths (dispatch, resolve_kept
    called directly, layers calling ops), and the user's line is what the warning is for."""
    level, f = 2, sys._getframe(2)  # 1 = the function calling warnings.warn
    while f is not None and f.f_globals.get("__name__", "").partition(".")[0] == "refcompress":
        level, f = level + 1, f.f_back
    return level


def resolve(op_name: str):
    """What ``dispatch`` runs for ``op_name`` under the current setting, without running it:
    ``(c_impl, isa_code, threads)`` or ``(reference, None, None)``.  Raises and warns exactly
    as ``dispatch`` does.  The answer holds for as long as :func:`current`, ``_native.lib``
    and the registered :class:`Op` are the same objects (a new setting is a new object):
    :func:`resolve_kept` keeps it on those terms, and ``dispatch`` uses that."""
    op = _get(op_name)
    s = current()
    if s.backend == "numpy":
        return op.reference, None, None
    if _native.lib is None or op.c is None:
        reason = _native.LOAD_ERROR or f"op {op_name!r} has no C implementation"
        if s.backend == "c":
            raise BackendError(f"backend 'c' requested but {reason}")
        if _native.lib is None:
            _warn_fallback_once(reason)
        return op.reference, None, None
    if s.isa is None:
        isa_code = _native.ISA_AUTO
    else:
        if s.isa not in variants(op_name):
            raise BackendError(
                f"isa: variant {s.isa!r} of op {op_name!r} cannot run here "
                f"(op has {list(op.variants)}, this build and CPU run {runnable_isas()})"
            )
        isa_code = _native.ISA_NAMES.index(s.isa)
    return op.c, isa_code, s.threads if s.threads is not None else 0


_kept = {}  # op name -> (setting, lib, registered Op, resolve's answer); see resolve_kept


def resolve_kept(op_name: str):
    """:func:`resolve`, kept per op while :func:`current`, ``_native.lib`` and the registered
    :class:`Op` are the same objects (what resolve's answer depends on): an op on a per-call
    latency budget calls this and then its implementation directly, instead of
    :func:`dispatch`."""
    kept = _kept.get(op_name)
    if kept is not None and kept[0] is current() and kept[1] is _native.lib and kept[2] is _REGISTRY.get(op_name):
        return kept[3]
    decided = resolve(op_name)
    _kept[op_name] = (current(), _native.lib, _REGISTRY.get(op_name), decided)
    return decided


def dispatch(op_name: str, *args, **kwargs):
    """Run ``op_name`` on already-validated arguments with the current setting."""
    impl, isa_code, threads = resolve_kept(op_name)
    if isa_code is None:
        return impl(*args, **kwargs)
    return impl(*args, isa=isa_code, threads=threads, **kwargs)


def check_rc(rc: int, op_name: str) -> None:
    """Turn a C return code into an exception (arguments were validated before the call,
    so RC_ERR_ARG here is a bug in the wrapper, reported as such)."""
    if rc == _native.RC_OK:
        return
    if rc == _native.RC_ERR_ISA:
        raise BackendError(f"{op_name}: the requested ISA variant cannot run on this CPU/build")
    raise RuntimeError(f"{op_name}: C kernel rejected validated arguments (code {rc}); this is a bug")
