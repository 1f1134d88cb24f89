"""The CPU flags Linux reports, for tests that check the kernels' own ISA probe against them."""

import pytest

import refcompress.kernels as kernels


def cpu_flags_or_skip() -> set:
    """/proc/cpuinfo's flags of the first CPU; skips the test where there are none (not Linux)
    or where there is no C build to compare with."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((set(line.split(":", 1)[1].split()) for line in f if line.startswith("flags")), None)
    except OSError:
        flags = None
    if flags is None or not kernels.available()["c_built"]:
        pytest.skip("no /proc/cpuinfo flags or no C build")
    return flags
