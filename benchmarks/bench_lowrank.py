"""Factored Linear y = U(Vx) + b: the fused C kernel vs dense NumPy and vs NumPy's two matmuls.

For each weight [m, n], rank r = K/16 .. K/2 (K = min(m, n)), batch and thread count:

  dense   x @ W^T + b                      (NumPy, BLAS)
  two     (x @ V^T) @ U^T + b              (NumPy, two BLAS calls)
  fp32    kernels.lowrank_linear           (one C call, packed factors)
  int8    kernels.lowrank_linear_q8        (one fused C call = two exact qgemm products; x already uint8)
  int8 fx kernels.lowrank_linear_q8        (the same from float32 x, quantized inside the call)

and prints  speedup = dense / fp32,  ideal = m n / ((m + n) r)  (the flop ratio),
efficiency = speedup / ideal,  vs_two = two / fp32 (>= 1: not slower than NumPy's two
matmuls),  q8x = fp32 / int8 (the kernel's ratio),  q8fx = fp32 / int8 fx (what a layer
fed float activations gets: x's quantization, ONNX QuantizeLinear's division, included).
BLAS gets the same thread count as the kernel; a batch-1
fp32 call given more threads than its rank split uses (rc_lowrank_batch1_threads: small
layers run on one) is marked * after its thread count.
Run with  env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE  (make bench does) so NumPy uses
its best BLAS kernel; the kernel that ran is printed.  --quick: fewer cells, shorter runs.
In each cell the five take turns over --rounds rounds and each time is the median of its
rounds (_harness.alternating_medians), so that load from other jobs hits them alike.
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _harness import SETTLE, alternating_medians, blas_report, blas_threads  # noqa: E402

import refcompress.kernels as K  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--rounds", type=int, default=5,
                    help="rounds in which the five contenders of a cell take turns (each time is the "
                         "median of its rounds; default 5)")
    args = ap.parse_args(argv)
    rounds = args.rounds
    shapes = [(1024, 1024), (768, 3072)]
    batches = [1, 16, 64, 256]
    threads_list = [1, 2]
    fracs = [16, 8, 4, 2]
    min_time = 0.01 if args.quick else 0.03  # per round
    if args.quick:
        shapes, batches, fracs = shapes[:1], [1, 64], [16, 4]
    print(f"NumPy BLAS: {blas_report()}")
    print(f"lowrank_linear variant: {K.selected_variant('lowrank_linear')}, "
          f"lowrank_linear_q8 variant: {K.selected_variant('lowrank_linear_q8')}")
    rng = np.random.default_rng(0)
    hdr = (f"{'W [m,n]':>11} {'r':>4} {'B':>4} {'thr':>3} | {'dense us':>9} {'two us':>8} {'fp32 us':>8} "
           f"{'int8 us':>8} {'int8 fx':>8} | {'speedup':>7} {'ideal':>6} {'eff':>5} {'vs_two':>6} {'q8x':>5} "
           f"{'q8fx':>5}")
    print(hdr)
    print("-" * len(hdr))
    rows = []
    for m, n in shapes:
        w = (rng.standard_normal((m, n)) / np.sqrt(n)).astype(np.float32)
        b = rng.standard_normal(m).astype(np.float32)
        kmin = min(m, n)
        for f in fracs:
            r = kmin // f
            v = (rng.standard_normal((r, n)) / np.sqrt(n)).astype(np.float32)
            u = (rng.standard_normal((m, r)) / np.sqrt(r)).astype(np.float32)
            packed = K.pack_lowrank(v, u, b)
            xcal = rng.standard_normal((256, n)).astype(np.float32)
            q = K.QuantizedLowRank.calibrate(v, u, b, xcal)
            ideal = m * n / ((m + n) * r)
            for B in batches:
                x = rng.standard_normal((B, n)).astype(np.float32)
                xq = q.quantize_input(x)
                for t in threads_list:
                    blas, ours = (lambda t=t: blas_threads(t)), (lambda t=t: K.use("c", threads=t))
                    td, t2, tf, tq, tx = alternating_medians([
                        (lambda: x @ w.T + b, blas),
                        (lambda: (x @ v.T) @ u.T + b, blas),
                        (lambda: K.lowrank_linear(x, packed), ours),
                        (lambda: K.lowrank_linear_q8(xq, q), ours),
                        (lambda: K.lowrank_linear_q8(x, q), ours),
                    ], rounds=rounds, min_time=min_time, settle=SETTLE if t > 1 else 0)
                    sp = td / tf
                    row = (m, n, r, B, t, td, t2, tf, tq, sp, ideal, sp / ideal, t2 / tf, tf / tq, tf / tx)
                    rows.append(row)
                    used = K.lowrank_batch1_threads(n, r, m, t) if B == 1 else t
                    tc = f"{t}*" if used < t else f"{t} "
                    print(f"{f'{m}x{n}':>11} {r:>4} {B:>4} {tc:>3} | {td*1e6:9.1f} {t2*1e6:8.1f} {tf*1e6:8.1f} "
                          f"{tq*1e6:8.1f} {tx*1e6:8.1f} | {sp:7.2f} {ideal:6.2f} {sp/ideal:5.2f} {t2/tf:6.2f} "
                          f"{tf/tq:5.2f} {tf/tx:5.2f}",
                          flush=True)
    eff = np.array([r_[11] for r_ in rows])
    vs2 = np.array([r_[12] for r_ in rows])
    q8 = np.array([r_[13] for r_ in rows if r_[3] >= 64])
    q8fx = np.array([r_[14] for r_ in rows if r_[3] >= 64])
    print(f"\ncells: {len(rows)}; efficiency >= 0.90 in {int(np.sum(eff >= 0.9))}, min {eff.min():.2f}, "
          f"median {np.median(eff):.2f}; not slower than two matmuls in {int(np.sum(vs2 >= 1.0))}, "
          f"min {vs2.min():.2f}; int8/fp32 at batch >= 64: min {q8.min() if q8.size else float('nan'):.2f}, "
          f"median {np.median(q8) if q8.size else float('nan'):.2f} (from float x: min "
          f"{q8fx.min() if q8fx.size else float('nan'):.2f}, median {np.median(q8fx) if q8fx.size else float('nan'):.2f})")


if __name__ == "__main__":
    main()
