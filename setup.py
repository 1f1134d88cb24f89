"""Only the cffi_modules hook, and a build_ext that never fails the install.

If the C extension cannot be built (no compiler, no OpenMP), the package still installs
and refcompress runs on its NumPy reference, warning once at import of the kernels.
"""

import os
import sys

from setuptools import setup
from setuptools.command.build_ext import build_ext


class OptionalBuildExt(build_ext):
    def build_extension(self, ext):
        try:
            super().build_extension(ext)
        except Exception as exc:  # noqa: BLE001 - any compiler failure must not stop the install
            flags = ("-fopenmp",)
            if any(f in ext.extra_compile_args for f in flags):
                # Some toolchains (e.g. Apple clang) lack OpenMP: try once more without it.
                ext.extra_compile_args = [a for a in ext.extra_compile_args if a not in flags]
                ext.extra_link_args = [a for a in ext.extra_link_args if a not in flags]
                try:
                    super().build_extension(ext)
                    return
                except Exception as exc2:  # noqa: BLE001
                    exc = exc2
            if os.environ.get("REFCOMPRESS_REQUIRE_C") == "1":
                raise
            sys.stderr.write(
                f"WARNING: refcompress C extension not built ({exc}); "
                "the library will run on its NumPy reference.\n"
            )


setup(
    cffi_modules=["csrc/build_ffi.py:ffibuilder"],
    cmdclass={"build_ext": OptionalBuildExt},
)
