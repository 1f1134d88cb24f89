"""qconv2d speed: ours vs NumPy fp32 (im2col + BLAS), onnxruntime QLinearConv and PyTorch
quantized conv (x86/fbgemm) when installed, 1 and 2 threads, batch 1 and 8, in one run,
in two tables, each like for like:

* NCHW: ours on NCHW data; onnxruntime's QLinearConv (NCHW); torch handed a plain
  NCHW-contiguous quantized tensor (what a user with NCHW data pays: its conversion to
  channels-last inside the call is timed; it returns a channels-last tensor).
* NHWC: ours with layout="NHWC"; onnxruntime's com.microsoft QLinearConv with
  channels_last=1; torch handed a channels-last tensor (converted outside the timed call),
  returning channels-last.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE .venv/bin/python benchmarks/bench_qconv.py [--quick]
        [--only dw3x3 ...] [--isa avx512_vnni avx512_vbmi ...] [--layout NCHW NHWC]

Per cell, ours (in each layout, and under each ``--isa`` variant: an A/B of two kernels in
one run), NumPy and the peers take turns over ``--rounds`` rounds, and each time is the
median of its rounds (``_harness.alternating_medians``), so the machine's load hits them
alike.

All three integer paths requantize to uint8 (the QLinearConv contract); weights are packed
once.  GOP/s counts 2 * MACs.  Ratios > 1 mean ours is faster.  NumPy fp32 (the same
im2col + BLAS in both tables) is timed once per cell, with both layouts.
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from _harness import (SETTLE, alternating_medians, blas_report, blas_threads, fmt_ratio, optional,  # noqa: E402
                      ort_session, print_table, rng, torch_quantized)
from bench_qgemm import measured_peak, peak_line  # noqa: E402

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


def ort_qlinearconv(x, w, zx, pad, groups, threads, nhwc=False):
    """onnxruntime QLinearConv on NCHW ``x``, or (``nhwc``) its com.microsoft QLinearConv with
    channels_last=1 on NHWC ``x`` (the kernel its NHWC transformer rewrites graphs to)."""
    ort, onnx = optional("onnxruntime"), optional("onnx")
    if ort is None or onnx is None:
        return None
    from onnx import TensorProto, helper, numpy_helper

    OC = w.shape[0]
    inits = [numpy_helper.from_array(a, n) for a, n in [
        (np.array(0.02, np.float32), "xs"), (np.array(zx, np.uint8), "xz"),
        (np.full(OC, 0.01, np.float32), "ws"), (np.zeros(OC, np.int8), "wz"), (w, "W"),
        (np.array(0.05, np.float32), "ys"), (np.array(128, np.uint8), "yz")]]
    k = w.shape[2]
    extra = dict(domain="com.microsoft", channels_last=1) if nhwc else {}
    node = helper.make_node("QLinearConv", ["X", "xs", "xz", "W", "ws", "wz", "ys", "yz"], ["Y"],
                            pads=[pad] * 4, group=groups, kernel_shape=[k, k], **extra)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("X", TensorProto.UINT8, list(x.shape))],
                              [helper.make_tensor_value_info("Y", TensorProto.UINT8, None)], initializer=inits)
    sess = ort_session(graph, threads, domains=("com.microsoft",) if nhwc else ())
    return lambda: sess.run(None, {"X": x})


def torch_qconv(x, w, pad, groups, threads, channels_last):
    """torch's quantized conv on NCHW ``x`` as a plain contiguous tensor, or (``channels_last``)
    converted to channels-last (fbgemm's native layout) outside the timed call."""
    torch = torch_quantized(threads)
    if torch is None:
        return None
    OC, Cg, k, _ = w.shape
    conv = torch.ao.nn.quantized.Conv2d(Cg * groups, OC, k, padding=pad, groups=groups)
    qw = torch.quantize_per_tensor(torch.from_numpy(w.astype(np.float32) * 0.01), 0.01, 0, torch.qint8)
    conv.set_weight_bias(qw, None)
    conv.scale, conv.zero_point = 0.05, 128
    qx = torch.quantize_per_tensor(torch.from_numpy((x.astype(np.float32) - 128) * 0.02), 0.02, 128, torch.quint8)
    if channels_last:
        qx = qx.contiguous(memory_format=torch.channels_last)

    def run():
        with torch.no_grad():
            conv(qx)

    return run


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="batch 1 only")
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--only", nargs="+", metavar="PREFIX",
                    help="only the shapes whose name starts with one of these (e.g. dw3x3)")
    ap.add_argument("--isa", nargs="+", metavar="VARIANT",
                    help="time ours under each of these ISA variants (A/B in one run, alternating "
                         "within each shape), one column pair per variant; default: auto")
    ap.add_argument("--layout", nargs="+", choices=["NCHW", "NHWC"], default=["NCHW", "NHWC"],
                    help="the tables to print (default both)")
    ap.add_argument("--rounds", type=int, default=5,
                    help="rounds in which ours, NumPy and the peers take turns (each result is the "
                         "median of its rounds; default 5)")
    args = ap.parse_args(argv)
    rounds = args.rounds
    shapes = [s for s in SHAPES if not args.only or any(s[0].startswith(p) for p in args.only)]
    isas = args.isa or [None]
    print(f"NumPy BLAS: {blas_report()}")
    print(f"refcompress qconv2d variant: {K.available()['ops']['qconv2d']['selected'] or 'numpy'}")
    peaks = {t: measured_peak(t) for t in args.threads}
    print(peak_line(peaks) if all(peaks.values()) else "no VNNI")
    print()
    g = rng(0)
    rows = {"NCHW": [], "NHWC": []}
    layouts = args.layout
    for threads in args.threads:
        for batch in ([1] if args.quick else [1, 8]):
            for name, C, OC, k, hw, groups in shapes:
                pad = k // 2
                x = g.integers(0, 256, (batch, C, hw, hw)).astype(np.uint8)
                w = g.integers(-127, 128, (OC, C // groups, k, k)).astype(np.int8)
                pw = K.pack_conv_weights(w, 0, groups)
                out = K.Requantize(np.float32(0.02 * 0.01 / 0.05), 128, np.uint8)
                xn = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
                xf, wf = x.astype(np.float32), w.astype(np.float32)
                ops = 2.0 * batch * OC * hw * hw * (C // groups) * k * k
                # ours in both layouts (and each --isa), NumPy and the peers take turns
                runs = [(layout, isa) for layout in layouts for isa in isas]
                peers = []
                for layout in layouts:
                    nhwc = layout == "NHWC"
                    o = ort_qlinearconv(xn if nhwc else x, w, 128, pad, groups, threads, nhwc=nhwc)
                    tq = torch_qconv(x, w, pad, groups, threads, channels_last=nhwc)
                    peers += [(o, None) if o else None, (tq, None) if tq else None]
                times = alternating_medians(
                    [(lambda lay=lay: K.qconv2d(xn if lay == "NHWC" else x, pw, 128, padding=pad, output=out,
                                                layout=lay),
                      lambda isa=isa: K.use("c" if isa else None, isa=isa, threads=threads)) for lay, isa in runs]
                    + [(lambda: numpy_conv(xf, wf, pad, groups), lambda: blas_threads(threads))] + peers,
                    rounds=rounds, settle=SETTLE if threads > 1 else 0)
                t_isa, t_np, t_peers = times[:len(runs)], times[len(runs)], times[len(runs) + 1:]
                for li, layout in enumerate(layouts):
                    t_ort, t_torch = t_peers[2 * li], t_peers[2 * li + 1]
                    best = min([t for t in (t_ort, t_torch) if t], default=None)
                    for (lay, isa), t_ours in zip(runs, t_isa):
                        if lay != layout:
                            continue
                        rows[layout].append(
                            [name, batch, threads] + ([isa] if args.isa else []) +
                            [f"{t_ours * 1e3:.2f}", f"{ops / t_ours / 1e9:.0f}",
                             f"{100 * ops / t_ours / peaks[threads]:.0f}%" if peaks[threads] else "-",
                             fmt_ratio(t_np / t_ours), fmt_ratio(t_ort / t_ours if t_ort else None),
                             fmt_ratio(t_torch / t_ours if t_torch else None),
                             fmt_ratio(best / t_ours if best else None)])
    titles = {"NCHW": "qconv2d, NCHW data (ort QLinearConv; torch given NCHW-contiguous, converts inside)",
              "NHWC": "qconv2d, NHWC data (layout=\"NHWC\"; ort com.microsoft QLinearConv channels_last; "
                      "torch given channels-last)"}
    for layout in layouts:
        print_table(["conv", "N", "thr"] + (["isa"] if args.isa else []) +
                    ["ours ms", "GOP/s", "% peak", "vs numpy f32", "vs ort", "vs torch", "vs best peer"],
                    rows[layout], title=titles[layout] + "; uint8 x int8 -> requantized uint8; ratios = their "
                                                         "time / ours")


if __name__ == "__main__":
    main()
