"""qconv2d speed: ours vs NumPy fp32 (im2col + BLAS), onnxruntime QLinearConv and PyTorch
quantized conv (x86/fbgemm) when installed, 1 and 2 threads, batch 1 and 8, in one run.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE .venv/bin/python benchmarks/bench_qconv.py [--quick]
        [--only dw3x3 ...] [--isa avx512_vnni avx512_vbmi ...]

``--isa`` times ours under each named variant (an A/B of two kernels in one run: the
variants alternate round by round within each shape, so the machine's load hits them alike).

All three integer paths requantize to uint8 (the QLinearConv contract); weights are packed
once.  GOP/s counts 2 * MACs.  Ratios > 1 mean ours is faster.
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from _harness import (blas_report, blas_threads, fmt_ratio, median_time, optional, ort_session,  # noqa: E402
                      print_table, rng, torch_quantized)
from bench_qgemm import measured_peak  # noqa: E402

import refcompress.kernels as K  # noqa: E402

# (name, C_in, C_out, kernel, H=W, groups)
SHAPES = [
    ("3x3 64->64 @56", 64, 64, 3, 56, 1),
    ("3x3 128->128 @28", 128, 128, 3, 28, 1),
    ("1x1 256->64 @56", 256, 64, 1, 56, 1),
    ("dw3x3 128 @56", 128, 128, 3, 56, 128),
]


def numpy_conv(x, w, pad, groups):
    """fp32 convolution as im2col + one BLAS matmul per group (NumPy's best simple form)."""
    N, C, H, W = x.shape
    OC, Cg, k, _ = w.shape
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    win = np.lib.stride_tricks.sliding_window_view(xp, (k, k), axis=(2, 3))  # N C H W k k
    ocg = OC // groups
    outs = []
    for g in range(groups):
        cols = win[:, g * Cg:(g + 1) * Cg].transpose(0, 2, 3, 1, 4, 5).reshape(N * H * W, Cg * k * k)
        outs.append(cols @ w[g * ocg:(g + 1) * ocg].reshape(ocg, -1).T)
    return np.concatenate(outs, axis=1)


def ort_qlinearconv(x, w, zx, pad, groups, threads):
    ort, onnx = optional("onnxruntime"), optional("onnx")
    if ort is None or onnx is None:
        return None
    from onnx import TensorProto, helper, numpy_helper

    N, C, H, W = x.shape
    OC = w.shape[0]
    inits = [numpy_helper.from_array(a, n) for a, n in [
        (np.array(0.02, np.float32), "xs"), (np.array(zx, np.uint8), "xz"),
        (np.full(OC, 0.01, np.float32), "ws"), (np.zeros(OC, np.int8), "wz"), (w, "W"),
        (np.array(0.05, np.float32), "ys"), (np.array(128, np.uint8), "yz")]]
    k = w.shape[2]
    node = helper.make_node("QLinearConv", ["X", "xs", "xz", "W", "ws", "wz", "ys", "yz"], ["Y"],
                            pads=[pad] * 4, group=groups, kernel_shape=[k, k])
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("X", TensorProto.UINT8, list(x.shape))],
                              [helper.make_tensor_value_info("Y", TensorProto.UINT8, None)], initializer=inits)
    sess = ort_session(graph, threads)
    return lambda: sess.run(None, {"X": x})


def torch_qconv(x, w, pad, groups, threads):
    torch = torch_quantized(threads)
    if torch is None:
        return None
    OC, Cg, k, _ = w.shape
    conv = torch.ao.nn.quantized.Conv2d(Cg * groups, OC, k, padding=pad, groups=groups)
    qw = torch.quantize_per_tensor(torch.from_numpy(w.astype(np.float32) * 0.01), 0.01, 0, torch.qint8)
    conv.set_weight_bias(qw, None)
    conv.scale, conv.zero_point = 0.05, 128
    qx = torch.quantize_per_tensor(torch.from_numpy((x.astype(np.float32) - 128) * 0.02), 0.02, 128, torch.quint8)
    qx = qx.contiguous(memory_format=torch.channels_last)  # fbgemm's native layout

    def run():
        with torch.no_grad():
            conv(qx)

    return run


def ab_times(fns, settings, rounds: int = 5):
    """Median time of each fn under its kernel setting (``settings[i]()`` makes the context),
    the variants alternating round by round so that a change in the machine's load hits all
    of them alike."""
    times = [[] for _ in fns]
    for _ in range(rounds):
        for i, (fn, setting) in enumerate(zip(fns, settings)):
            with setting():
                times[i].append(median_time(fn, min_repeats=3, min_time=0.05))
    return [sorted(t)[len(t) // 2] for t in times]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="batch 1 only")
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--only", nargs="+", metavar="PREFIX",
                    help="only the shapes whose name starts with one of these (e.g. dw3x3)")
    ap.add_argument("--isa", nargs="+", metavar="VARIANT",
                    help="time ours under each of these ISA variants (A/B in one run, alternating "
                         "within each shape), one column pair per variant; default: auto")
    args = ap.parse_args(argv)
    shapes = [s for s in SHAPES if not args.only or any(s[0].startswith(p) for p in args.only)]
    isas = args.isa or [None]
    print(f"NumPy BLAS: {blas_report()}")
    print(f"refcompress qconv2d variant: {K.available()['ops']['qconv2d']['selected'] or 'numpy'}")
    peak = measured_peak()
    print(f"measured int8 peak (vpdpbusd, 1 core): {peak / 1e9:.0f} GOP/s" if peak else "no VNNI")
    print()
    g = rng(0)
    rows = []
    for threads in args.threads:
        for batch in ([1] if args.quick else [1, 8]):
            for name, C, OC, k, hw, groups in shapes:
                pad = k // 2
                x = g.integers(0, 256, (batch, C, hw, hw)).astype(np.uint8)
                w = g.integers(-127, 128, (OC, C // groups, k, k)).astype(np.int8)
                pw = K.pack_conv_weights(w, 0, groups)
                out = K.Requantize(np.float32(0.02 * 0.01 / 0.05), 128, np.uint8)
                t_isa = ab_times([lambda isa=isa: K.qconv2d(x, pw, 128, padding=pad, output=out) for isa in isas],
                                 [lambda isa=isa: K.use("c" if isa else None, isa=isa, threads=threads) for isa in isas])
                xf, wf = x.astype(np.float32), w.astype(np.float32)
                with blas_threads(threads):
                    t_np = median_time(lambda: numpy_conv(xf, wf, pad, groups), min_repeats=3)
                o = ort_qlinearconv(x, w, 128, pad, groups, threads)
                t_ort = median_time(o, min_repeats=3) if o else None
                tq = torch_qconv(x, w, pad, groups, threads)
                t_torch = median_time(tq, min_repeats=3) if tq else None
                ops = 2.0 * batch * OC * hw * hw * (C // groups) * k * k
                best = min([t for t in (t_ort, t_torch) if t], default=None)
                for isa, t_ours in zip(isas, t_isa):
                    rows.append([name, batch, threads] + ([isa] if args.isa else []) +
                                [f"{t_ours * 1e3:.2f}", f"{ops / t_ours / 1e9:.0f}",
                                 f"{100 * ops / t_ours / (peak * threads):.0f}%" if peak else "-",
                                 fmt_ratio(t_np / t_ours), fmt_ratio(t_ort / t_ours if t_ort else None),
                                 fmt_ratio(t_torch / t_ours if t_torch else None),
                                 fmt_ratio(best / t_ours if best else None)])
    print_table(["conv", "N", "thr"] + (["isa"] if args.isa else []) +
                ["ours ms", "GOP/s", "% peak", "vs numpy f32", "vs ort", "vs torch", "vs best peer"], rows,
                title="qconv2d (uint8 x int8 -> requantized uint8); ratios = their time / ours")


if __name__ == "__main__":
    main()
