"""The only module that touches the cffi extension: loads it once, or records why not."""

from __future__ import annotations

import threading

import numpy as np

try:  # pragma: no branch - which arm runs depends on the build
    from refcompress._native import ffi, lib  # type: ignore[attr-defined]

    LOAD_ERROR: str | None = None
except ImportError as exc:  # no compiler at install time, or a broken build
    ffi = None
    lib = None
    LOAD_ERROR = f"{type(exc).__name__}: {exc}"

#: ISA variant names, indexed by the C constants RC_ISA_PORTABLE .. RC_ISA_AVX_VNNI
#: ("avx512_vbmi" is AVX-512 VNNI plus VBMI's byte permutes; only qconv2d has that variant;
#: "avx_vnni" is AVX2 plus the 256-bit VEX vpdpbusd, no AVX-512).  The index is the code C
#: takes, not the order of preference: "auto" asks C (rc_isa_best).
ISA_NAMES = ("portable", "avx2", "avx512", "avx512_vnni", "avx512_vbmi", "avx_vnni")
ISA_AUTO = -1
RC_OK = 0
RC_ERR_ARG = 1
RC_ERR_ISA = 2
RC_ERR_NONFINITE = 3


def mask_to_names(mask: int) -> list[str]:
    return [name for i, name in enumerate(ISA_NAMES) if mask & (1 << i)]


def names_to_mask(names) -> int:
    return sum(1 << ISA_NAMES.index(name) for name in set(names))


_ARRAY_OF = {}  # "float *" -> ffi.typeof("float[]") (array_type)


def array_type(ctype: str):
    """The cffi array type ``from_buffer`` takes for a C parameter of type ``ctype``
    ("float *" -> float[], "void *" -> char[]), memoised: a type object, not its name, saves
    from_buffer a lookup (~80 ns) on calls of a few microseconds."""
    t = _ARRAY_OF.get(ctype)
    if t is None:
        t = _ARRAY_OF[ctype] = ffi.typeof("char[]" if ctype == "void *" else ctype.replace(" *", "[]"))
    return t


#: array_type of the two pointer types on the latency-bound paths (None without the build)
F32_ARRAY = array_type("float *") if ffi is not None else None
U8_ARRAY = array_type("uint8_t *") if ffi is not None else None


def ptr(ctype: str, array):
    """A cdata view of a C-contiguous ndarray's buffer (no copy), passable where the C
    signature takes ``ctype``.  ``from_buffer`` is ~6x cheaper per call than going through
    ``array.ctypes``, which matters for batch-1 layers."""
    return ffi.from_buffer(array_type(ctype), array)


#: Cache-line size: buffers the kernels stream are placed at multiples of it.
ALIGN = 64


def aligned_empty(shape, dtype, align: int = ALIGN) -> np.ndarray:
    """An uninitialised C-contiguous array whose data starts at a multiple of ``align``
    bytes.  NumPy places large arrays 16 bytes past a page boundary (glibc's mmap header),
    so every 64-byte vector load from one straddles two cache lines: on Zen 5 that made the
    batch-1 factored Linear 1.3-1.6x slower (docs/lowrank.md section 8, "lr9")."""
    dtype = np.dtype(dtype)
    shape = tuple(int(d) for d in np.atleast_1d(shape))
    if any(d < 0 for d in shape):  # a C size function's -1 must not become a small buffer
        raise ValueError(f"aligned_empty: negative dimension in shape {shape}")
    count = int(np.prod(shape, dtype=np.int64))
    if count == 0:  # nothing to load: no address to align (an empty view keeps its base's)
        return np.empty(shape, dtype)
    buf = np.empty(count * dtype.itemsize + align, np.uint8)
    start = -buf.ctypes.data % align
    return buf[start:start + count * dtype.itemsize].view(dtype).reshape(shape)


# Kernel scratch space, reused across calls (of every op), one buffer per Python thread: the
# kernels release the GIL, so two threads must never share one.  Buffers up to _WS_KEEP
# bytes are kept (a larger one is allocated for its call only).
_tls = threading.local()
_WS_KEEP = 1 << 22


def workspace(nbytes):
    """(size, array, cffi pointer) of this thread's workspace of at least ``nbytes``."""
    ws = getattr(_tls, "ws", None)
    if ws is not None and ws[0] >= nbytes:
        return ws
    # zeroed (calloc: free for fresh pages): qgemm compares per-call column terms with the
    # workspace's previous bytes and stores only what changed, so a first call must not read
    # uninitialised memory (harmless to the result, but noise for Valgrind / MSan)
    buf = np.zeros(max(nbytes, 1), np.uint8)
    ws = (nbytes, buf, ptr("void *", buf))
    if nbytes <= _WS_KEEP:
        _tls.ws = ws
    return ws
