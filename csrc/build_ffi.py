"""cffi build script (out-of-line API mode) for refcompress._native.

The cdef is csrc/refcompress.h read verbatim (it is kept cdef-clean), so the C API is
declared in exactly one place.  Every .c file under csrc/ is compiled; each ISA variant
file sets its own target with ``#pragma GCC target``, so no global -march flag is used and
the CPU probe picks the variant at run time.

Build switches (environment variables read at build time):
  REFCOMPRESS_SANITIZE=1   AddressSanitizer + UBSan (-O1 -g, abort on the first UB report)
  REFCOMPRESS_NO_OPENMP=1  build without OpenMP (kernels then run single-threaded)
"""

import os
import pathlib

from cffi import FFI

CSRC = pathlib.Path(__file__).resolve().parent
ROOT = CSRC.parent


def _rel(path: pathlib.Path) -> str:
    # setuptools wants source paths relative to the project root (setup.py's folder).
    return os.path.relpath(path, ROOT)


def compile_flags():
    """(extra_compile_args, extra_link_args, define_macros) for the current switches."""
    # -fno-wrapv undoes the -fwrapv that Python's own CFLAGS pass to every extension: with
    # it GCC 12 leaves some int loops scalar (qgemm's column-sum loop ran 4x slower), and
    # UBSan cannot report a signed overflow it has been told is defined.  The kernels are
    # written so that no signed int overflows (docs/kernels.md: the int32 bound on K).
    cflags = ["-std=c11", "-Wall", "-Wextra", "-Wno-unused-parameter", "-fno-strict-aliasing", "-fno-wrapv"]
    ldflags = []
    macros = []
    if os.environ.get("REFCOMPRESS_SANITIZE") == "1":
        san = ["-fsanitize=address,undefined", "-fno-sanitize-recover=all", "-fno-omit-frame-pointer"]
        cflags += ["-O1", "-g"] + san
        ldflags += san
        macros.append(("RC_SANITIZE", "1"))
    else:
        # -O3 without -ffast-math: the compiler must keep IEEE semantics, which exactness needs.
        cflags += ["-O3"]
    if os.environ.get("REFCOMPRESS_NO_OPENMP") != "1":
        cflags.append("-fopenmp")
        ldflags.append("-fopenmp")
    return cflags, ldflags, macros


ffibuilder = FFI()
ffibuilder.cdef((CSRC / "refcompress.h").read_text())

_cflags, _ldflags, _macros = compile_flags()
ffibuilder.set_source(
    "refcompress._native",
    '#include "refcompress.h"',
    sources=sorted(_rel(p) for p in CSRC.rglob("*.c")),
    include_dirs=[_rel(CSRC)],
    extra_compile_args=_cflags,
    extra_link_args=_ldflags,
    define_macros=_macros,
)

if __name__ == "__main__":
    ffibuilder.compile(tmpdir=str(ROOT / "build" / "cffi"), verbose=True)
