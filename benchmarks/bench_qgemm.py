"""qgemm speed: ours vs NumPy fp32, onnxruntime (MatMulInteger) and PyTorch (quantized
linear, x86/fbgemm engine) when installed, single- and two-thread, in one run.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE .venv/bin/python benchmarks/bench_qgemm.py [--quick]

Ours runs with weights packed once (as a layer does) and int32 output (the MatMulInteger
contract); the "req." columns add the fused requantize-to-uint8 epilogue, against NumPy fp32
and against onnxruntime's QLinearMatMul (the same contract: uint8 out).
Per shape, ours, NumPy and the peers take turns over ``--rounds`` rounds and each time is
the median of its rounds (``_harness.alternating_medians``), so that load from other jobs
falls on every contender alike.
"vs torch" divides torch's time by our requantizing call's ("req."), since torch's quantized
Linear requantizes to uint8 too; "vs ort" (MatMulInteger, int32 out) by our int32 call's;
"vs best peer" is the smaller of the two.
GOP/s counts 2*M*K*N; "% peak" divides by the vpdpbusd peak measured with as many cores
running it at once as the row has threads (printed with one core's times n).  Ratios > 1 mean ours is faster.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from _harness import (SETTLE, alternating_medians, blas_report, blas_threads, fmt_ratio, median_time,  # noqa: E402
                      optional, ort_session, print_table, rng, torch_quantized)

import refcompress.kernels as K  # noqa: E402
from refcompress.kernels import _native  # noqa: E402

SHAPES = [(1, 768, 768), (1, 768, 3072), (64, 768, 3072), (256, 1024, 1024), (1024, 1024, 1024), (128, 3072, 768)]


def measured_peak(threads: int = 1) -> float | None:
    """int8 ops/s of ``threads`` cores running independent vpdpbusd chains at the same time
    (None without VNNI): the denominator of "% peak" at that thread count, since cores
    that run wide vector code together may clock lower than one alone.

    The fastest of many short runs, not their median: the peak is what the cores can do,
    and another job on the machine only ever slows a run down (a median of long runs under
    load made the "% peak" column read above 100 %).  Several cores run the one-core loop
    from Python threads (cffi releases the GIL), each long enough (~60 ms) that starting and
    joining them is well under 1 % of it (at ~6 ms the skew understated the peak by ~1 %)."""
    if _native.lib is None or _native.lib.rc_bench_vnni_peak(1) < 0:
        return None
    iters = 200_000 if threads == 1 else 20_000_000  # ~0.6 ms / ~60 ms
    best = float("inf")
    for _ in range(41 if threads == 1 else 5):
        if threads == 1:
            t0 = time.perf_counter()
            _native.lib.rc_bench_vnni_peak(iters)
            best = min(best, time.perf_counter() - t0)
            continue
        go = threading.Barrier(threads + 1)

        def work():
            go.wait()
            _native.lib.rc_bench_vnni_peak(iters)

        team = [threading.Thread(target=work) for _ in range(threads)]
        for th in team:
            th.start()
        go.wait()
        t0 = time.perf_counter()
        for th in team:
            th.join()
        best = min(best, time.perf_counter() - t0)
    return threads * (iters * 24 * 64 * 2) / best


def peak_line(peaks: dict) -> str:
    """The measured peaks, and how far the cores together fall short of one core's times n."""
    one = peaks.get(1) or measured_peak(1)
    parts = [f"{peaks[t] / 1e9:.0f} GOP/s on {t} core{'s' if t > 1 else ''}"
             + (f" together ({peaks[t] / (t * one):.1%} of {t} x one core)" if t > 1 else "")
             for t in sorted(peaks)]
    return "measured int8 peak (vpdpbusd): " + ", ".join(parts)


def _ort_one_node(op_type, inputs, initializers, a, out_type, N, threads):
    """An onnxruntime session of one node reading the uint8 graph input "A" [M, K] (and the
    named initializers) into the output "Y" [M, N]; None without onnxruntime / onnx."""
    if optional("onnxruntime") is None or optional("onnx") is None:
        return None
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node(op_type, inputs, ["Y"])], "g",
        [helper.make_tensor_value_info("A", TensorProto.UINT8, list(a.shape))],
        [helper.make_tensor_value_info("Y", out_type(TensorProto), [a.shape[0], N])],
        initializer=initializers,
    )
    return ort_session(graph, threads)


def ort_matmul_integer(a, b, za, threads):
    """onnxruntime MatMulInteger (uint8 x int8 -> int32), checked exact."""
    if optional("onnx") is None:
        return None
    from onnx import numpy_helper

    sess = _ort_one_node("MatMulInteger", ["A", "B", "za", "zb"],
                         [numpy_helper.from_array(b, "B"), numpy_helper.from_array(np.array(za, np.uint8), "za"),
                          numpy_helper.from_array(np.array(0, np.int8), "zb")],
                         a, lambda tp: tp.INT32, b.shape[1], threads)
    if sess is None:
        return None
    want = (a.astype(np.int64) - za) @ b.astype(np.int64)
    got = sess.run(None, {"A": a})[0]
    assert np.array_equal(got, want), "onnxruntime MatMulInteger disagrees with the exact product"
    return lambda: sess.run(None, {"A": a})


def ort_qlinear_matmul(a, b, za, out_scale, out_zp, threads):
    """onnxruntime QLinearMatMul (uint8 x int8 -> requantized uint8, per-tensor scales whose
    product a_scale * b_scale / y_scale is ``out_scale``): the peer of our fused requantize
    epilogue.  Checked to within one code of the exact requantization (onnxruntime's own
    rounding of the combined scale may differ in the last step)."""
    if optional("onnx") is None:
        return None
    from onnx import numpy_helper

    f32 = lambda v, name: numpy_helper.from_array(np.array(v, np.float32), name)  # noqa: E731
    sess = _ort_one_node("QLinearMatMul", ["A", "sa", "za", "B", "sb", "zb", "sy", "zy"],
                         [f32(1.0, "sa"), numpy_helper.from_array(np.array(za, np.uint8), "za"),
                          numpy_helper.from_array(b, "B"), f32(1.0, "sb"),
                          numpy_helper.from_array(np.array(0, np.int8), "zb"),
                          f32(1.0 / out_scale, "sy"), numpy_helper.from_array(np.array(out_zp, np.uint8), "zy")],
                         a, lambda tp: tp.UINT8, b.shape[1], threads)
    if sess is None:
        return None
    acc = (a.astype(np.int64) - za) @ b.astype(np.int64)
    want = np.clip(np.rint(acc * np.float64(out_scale)) + out_zp, 0, 255)
    got = sess.run(None, {"A": a})[0]
    assert np.abs(got.astype(np.int64) - want).max() <= 1, "onnxruntime QLinearMatMul is off by more than a code"
    return lambda: sess.run(None, {"A": a})


def torch_qlinear(a_f, b_f, threads):
    torch = torch_quantized(threads)
    if torch is None:
        return None
    N = b_f.shape[1]
    w = torch.from_numpy(np.ascontiguousarray(b_f.T))
    qw = torch.quantize_per_tensor(w, float(np.abs(b_f).max() / 127), 0, torch.qint8)
    lin = torch.ao.nn.quantized.Linear(b_f.shape[0], N)
    lin.set_weight_bias(qw, None)
    lin.scale, lin.zero_point = 0.05, 128
    x = torch.from_numpy(a_f)
    qx = torch.quantize_per_tensor(x, float(np.abs(a_f).max() / 127), 128, torch.quint8)

    def run():
        with torch.no_grad():
            lin(qx)

    return run


def call_path(threads_list):
    """Batch-1 call cost: the kernel alone (rc_qgemm_repeat: the same call repeated in C),
    one cffi call with its arguments made in advance, qgemm with packed weights (int32; bias
    and a per-column Requantize), and QuantizedLinear.forward, in alternating rounds."""
    from importlib import import_module

    from refcompress.quant.modules import QuantizedLinear

    qg = import_module("refcompress.kernels.qgemm")
    lib = _native.lib
    g = rng(1)
    rows = []
    for threads in threads_list:
        for M, Kd, N in [s for s in SHAPES if s[0] == 1]:
            a = g.integers(0, 256, (M, Kd)).astype(np.uint8)
            w = g.integers(-127, 128, (N, Kd)).astype(np.int8)
            pw = K.pack_weights(np.ascontiguousarray(w.T))
            bias = g.integers(-5000, 5000, N).astype(np.int32)
            req = K.Requantize(np.full(N, 2e-4, np.float32), 128, np.uint8)
            lin = QuantizedLinear(Kd, N).set_quantized(w, np.full(N, 0.01, np.float32), bias, (0.02, 128),
                                                         (0.05, 128))
            e = qg._epilogue_cached(pw._epilogues, None, None, N)[0]
            out = np.empty((M, N), np.int32)
            ws = _native.workspace(lib.rc_qgemm_workspace_size(M, Kd, N))
            args = (_native.ptr("void *", a), 1, M, Kd, N, 128, *pw._c_args, e, _native.ptr("void *", out), ws[2],
                    -1, threads)
            reps = 20  # a short window: a loaded machine preempts long ones

            def in_c():
                lib.rc_qgemm_repeat(reps, *args)

            steps = {
                "C loop": in_c,
                "one cffi call": lambda: lib.rc_qgemm(*args),
                "qgemm int32": lambda: K.qgemm(a, pw, 128),
                "qgemm bias+req": lambda: K.qgemm(a, pw, 128, bias=bias, output=req),
                "QuantizedLinear": lambda: lin.forward(a),
            }
            best = {k: float("inf") for k in steps}
            with K.use(threads=threads):
                for _ in range(7):  # alternating rounds, the minimum of each step's medians
                    for k, fn in steps.items():
                        best[k] = min(best[k], median_time(fn, min_time=0.05))
            best["C loop"] /= reps
            rows.append([f"{M}x{Kd}x{N}", threads] + [f"{best[k] * 1e6:.1f}" for k in steps]
                        + [f"{(best['qgemm int32'] - best['C loop']) * 1e6:.1f}"])
    print_table(["M x K x N", "thr", "C loop us", "1 cffi call", "qgemm int32", "qgemm bias+req",
                 "QuantizedLinear", "int32 - C loop"], rows,
                title="batch-1 call path (min over 7 alternating rounds of medians; us per call)")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer shapes, shorter timing")
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--rounds", type=int,
                    help="rounds in which ours, NumPy and the peers take turns (each result is the "
                         "median of its rounds; default 5, 2 with --quick)")
    ap.add_argument("--call-path", action="store_true",
                    help="only the batch-1 call-path table (the kernel in a C loop against each Python layer)")
    args = ap.parse_args(argv)
    if args.call_path:
        call_path(args.threads)
        return
    shapes = SHAPES[:3] if args.quick else SHAPES
    rounds = args.rounds or (2 if args.quick else 5)
    print(f"NumPy BLAS: {blas_report()}")
    info = K.available()
    print(f"refcompress qgemm variant: {info['ops']['qgemm']['selected'] or 'numpy'}")
    peaks = {t: measured_peak(t) for t in args.threads}
    print(peak_line(peaks) if all(peaks.values()) else "no VNNI: % peak not shown")
    print()
    g = rng(0)
    rows = []
    for threads in args.threads:
        for M, Kd, N in shapes:
            a = g.integers(0, 256, (M, Kd)).astype(np.uint8)
            b = g.integers(-127, 128, (Kd, N)).astype(np.int8)
            a_f = a.astype(np.float32)
            b_f = b.astype(np.float32)
            pw = K.pack_weights(b)
            req = K.Requantize(1e-4, 128, np.uint8)
            ort = ort_matmul_integer(a, b, 128, threads)
            ort_req = ort_qlinear_matmul(a, b, 128, 1e-4, 128, threads)
            tq = torch_qlinear((a_f - 128) / 10, b_f / 127, threads)
            ours = lambda: K.use(threads=threads)  # noqa: E731
            t_ours, t_req, t_np, t_ort, t_torch, t_ort_req = alternating_medians([
                (lambda: K.qgemm(a, pw, 128), ours),
                (lambda: K.qgemm(a, pw, 128, output=req), ours),
                (lambda: a_f @ b_f, lambda: blas_threads(threads)),
                (ort, None) if ort else None,
                (tq, None) if tq else None,
                (ort_req, None) if ort_req else None,
            ], rounds=rounds, settle=SETTLE if threads > 1 else 0)
            ops = 2.0 * M * Kd * N
            # like for like: MatMulInteger returns int32 as our plain call does; torch's
            # quantized Linear requantizes to uint8, as our call with `output=req` does
            vs = [r for r in (t_ort / t_ours if t_ort else None, t_torch / t_req if t_torch else None) if r]
            worst_vs_peer = min(vs, default=None)
            rows.append([
                f"{M}x{Kd}x{N}", threads,
                f"{t_ours * 1e6:.0f}", f"{ops / t_ours / 1e9:.0f}",
                f"{100 * ops / t_ours / peaks[threads]:.0f}%" if peaks[threads] else "-",
                fmt_ratio(t_np / t_ours),
                fmt_ratio(t_ort / t_ours if t_ort else None),
                fmt_ratio(t_torch / t_req if t_torch else None),
                fmt_ratio(worst_vs_peer),
                fmt_ratio(t_np / t_req),
                fmt_ratio(t_ort_req / t_req if t_ort_req else None),
            ])
    print_table(
        ["M x K x N", "thr", "ours us", "GOP/s", "% peak", "vs numpy f32", "vs ort", "vs torch",
         "vs best peer", "req. vs numpy", "req. vs ort"],
        rows,
        title="qgemm (uint8 x int8 -> int32, packed weights); ratios = their time / ours",
    )


if __name__ == "__main__":
    main()
