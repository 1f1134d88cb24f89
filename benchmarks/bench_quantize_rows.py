"""Dynamic per-row (per-token) symmetric int8 quantization: kernels.quantize_rows (one fused
C pass per row) vs the NumPy multi-pass path it replaces in W8A8Linear's "token" mode, at
the activation shapes of an all-MiniLM-L6-v2 forward (batch 32 of 24 and 116 tokens,
hidden 384, FFN 1536), with and without SmoothQuant factors, 1 and 2 threads, in one run.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE .venv/bin/python benchmarks/bench_quantize_rows.py [--quick]

"numpy path" is the old code: xs = x / m (when smoothing), a = max |xs| per row, the scale
s = a / 127 (1 for zero rows), then kernels.quantize(xs, s, axis=0) -- whose C kernel runs
with the same thread count as ours; the NumPy passes are single-threaded.  "ours" is the
public call, validation and output allocation included.  Ratios are the numpy path's
median time divided by ours (> 1: ours is faster).  The machine is shared: run it when
`uptime` shows a low load, and quote ratios, not microseconds.
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from _harness import fmt_ratio, median_time, print_table, rng  # noqa: E402

import refcompress.kernels as K  # noqa: E402

SHAPES = [(768, 384), (768, 1536), (3712, 384), (3712, 1536)]


def numpy_path(x, m):
    """W8A8Linear's token mode before quantize_rows (divides by m, as it did)."""
    xs = x / m if m is not None else x
    amax = np.max(np.abs(xs), axis=1)
    s = np.where(amax > 0, amax / np.float32(127), np.float32(1)).astype(np.float32)
    return K.quantize(xs, s, 0, axis=0, dtype=np.int8, qmin=-127, qmax=127), s


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="the smallest shape only")
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    args = ap.parse_args(argv)
    info = K.available()
    print(f"variant: quantize_rows={info['ops']['quantize_rows']['selected'] or 'numpy'}, "
          f"quantize={info['ops']['quantize']['selected'] or 'numpy'}; max threads {info['max_threads']}; "
          f"load average {os.getloadavg()[0]:.2f}")
    print()
    g = rng(0)
    th = args.threads
    rows = []
    for shape in SHAPES[:1] if args.quick else SHAPES:
        x = g.standard_normal(shape).astype(np.float32)
        x[:, g.choice(shape[1], 6, replace=False)] *= 30.0  # transformer-like outlier channels
        m = np.sqrt(np.abs(x).max(axis=0)).astype(np.float32)  # SmoothQuant factors (alpha 0.5)
        inv = (np.float32(1) / m).astype(np.float32)
        for label, mm, iv in (("plain", None, None), ("smooth", m, inv)):
            ours, theirs = {}, {}
            for t in th:
                with K.use(threads=t):
                    ours[t] = median_time(lambda: K.quantize_rows(x, iv))
                    theirs[t] = median_time(lambda: numpy_path(x, mm))
            cells = ["x".join(map(str, shape)), label]
            cells += [f"{ours[t] * 1e6:.0f}" for t in th]
            cells += [f"{theirs[t] * 1e6:.0f}" for t in th]
            cells += [fmt_ratio(theirs[t] / ours[t]) for t in th]
            rows.append(cells)
    print_table(
        ["shape", "smooth"] + [f"ours {t}t us" for t in th] + [f"numpy path {t}t us" for t in th]
        + [f"ratio {t}t" for t in th],
        rows,
        title="per-row symmetric int8 quantization (median us); ratio = numpy path / ours",
    )


if __name__ == "__main__":
    main()
