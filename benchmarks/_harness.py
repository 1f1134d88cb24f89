"""Shared benchmark machinery: medians over repeats, peers when installed, plain tables.

Quote ratios, not seconds: the machine is shared and noisy, but two timings taken in the
same run under the same load compare fairly.  NumPy is measured at its best BLAS kernel
when the caller unsets OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE for the command (make bench
does); the kernel that ran is printed.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import statistics
import time

import numpy as np


def median_time(fn, *, min_time: float = 0.15, min_repeats: int = 5, max_repeats: int = 200) -> float:
    """Median seconds of ``fn()`` over repeats (after one warm-up call)."""
    fn()
    times = []
    start = time.perf_counter()
    while len(times) < min_repeats or (time.perf_counter() - start < min_time and len(times) < max_repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


#: Seconds to wait before timing a contender on several threads.  A thread pool keeps its
#: idle workers spinning for a while after a call -- OpenBLAS about 2^28 cycles (~0.1 s),
#: libgomp and onnxruntime far less -- and on 2 cores a spinning worker of the previous
#: contender's pool halves the next contender's speed.  Without the pause the contender
#: timed right after NumPy paid for NumPy's pool.
SETTLE = 0.15


def alternating_medians(timed, *, rounds: int = 5, min_time: float = 0.05, settle: float = 0.0) -> list:
    """Median seconds of each contender, the contenders taking turns round by round.

    ``timed`` is a list of ``(fn, context)`` pairs (``context()`` makes the setting a
    contender runs under, e.g. a thread count; None for none) or None for an absent peer.
    Each round times every contender once (``median_time`` over ``min_time``, after
    ``settle`` seconds of sleep: pass :data:`SETTLE` when the contenders run on several
    threads); a contender's result is the median of its rounds.  A burst of load from
    another job then falls on all contenders alike instead of on whichever one it happened
    to overlap, which is what a ratio between them needs.  Absent peers give None.
    """
    times = [[] for _ in timed]
    for _ in range(rounds):
        for i, entry in enumerate(timed):
            if entry is None:
                continue
            fn, context = entry
            if settle:
                time.sleep(settle)
            with (context() if context is not None else contextlib.nullcontext()):
                times[i].append(median_time(fn, min_repeats=3, min_time=min_time))
    return [statistics.median(t) if t else None for t in times]


def optional(module: str):
    """Import a peer if installed, else None (benchmarks never require peers)."""
    try:
        return importlib.import_module(module)
    except Exception:  # noqa: BLE001 - a broken optional install counts as absent
        return None


@contextlib.contextmanager
def blas_threads(n: int):
    """Limit NumPy's BLAS to n threads for a like-for-like comparison."""
    tpc = optional("threadpoolctl")
    if tpc is None:
        yield
        return
    with tpc.threadpool_limits(limits=n, user_api="blas"):
        yield


def blas_report() -> str:
    """Which BLAS NumPy runs, with its kernel (e.g. OpenBLAS SkylakeX / Zen)."""
    env = {k: os.environ[k] for k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE") if k in os.environ}
    tpc = optional("threadpoolctl")
    if tpc is None:
        return "threadpoolctl not installed: BLAS kernel unknown"
    info = [i for i in tpc.threadpool_info() if i.get("user_api") == "blas"]
    parts = [f"{i.get('internal_api')} {i.get('version')} kernel={i.get('architecture')}" for i in info]
    note = f" (WARNING: {env} set: NumPy is not at its best BLAS kernel)" if env else ""
    return "; ".join(parts) + note


def print_table(headers, rows, *, title: str | None = None) -> None:
    """A plain-text table, columns right-aligned except the first."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    if title:
        print(title)
    for j, r in enumerate(cells):
        print("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))))
        if j == 0:
            print("  ".join("-" * w for w in widths))
    print()


def fmt_ratio(x) -> str:
    return "-" if x is None else f"{x:.2f}x"


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def ort_session(graph, threads: int, domains=()):
    """An onnxruntime CPU session of a one-graph ONNX model (opset 13, and version 1 of each
    contrib op domain named in ``domains``), ``threads`` intra-op threads; None when
    onnxruntime / onnx are not installed."""
    ort, onnx = optional("onnxruntime"), optional("onnx")
    if ort is None or onnx is None:
        return None
    from onnx import helper

    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)] +
                              [helper.make_opsetid(d, 1) for d in domains])
    model.ir_version = 8
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def torch_quantized(threads: int):
    """torch configured for a quantized benchmark (threads, x86/fbgemm engine), or None."""
    torch = optional("torch")
    if torch is None:
        return None
    import warnings

    warnings.filterwarnings("ignore", category=UserWarning)  # quantized-tensor deprecation notices
    torch.set_num_threads(threads)
    engines = torch.backends.quantized.supported_engines
    torch.backends.quantized.engine = "x86" if "x86" in engines else "fbgemm"
    return torch
