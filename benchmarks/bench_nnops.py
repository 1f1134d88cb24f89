"""Transformer element-wise / row ops: ours (C, 1 and 2 threads) vs the NumPy reference and
vs a plain NumPy float32 implementation, at the shapes of an all-MiniLM-L6-v2 forward
(batch 32 sentences of 24 and 116 tokens, hidden 384, 12 heads, FFN 1536), in one run.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE .venv/bin/python benchmarks/bench_nnops.py [--quick]

Ours is the public call (validation and the output allocation included), float32 in and
out.  "reference" is the library's NumPy definition (float64 inside, rounded once); "numpy
f32" is what one would write in NumPy in float32 (same formulas: A&S erf with np.exp,
two-pass mean / variance, max-subtracted exp) -- single-threaded, like all NumPy
element-wise code.  Ratios are their time divided by ours (> 1: ours is faster).

The attention rows time ``K.attention(q, k, v, 12, 1/sqrt(32), mask)`` on [32, S, 384]
q, k, v against what nn's unfused path does: split heads (transposes), np.matmul of
[B, 12, S, 32] by its transpose, scale, the softmax kernel with the mask (at the same
thread count), np.matmul by V and the merge transpose; NumPy's BLAS limited to the same
number of threads (threadpoolctl).
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from _harness import blas_report, blas_threads, fmt_ratio, median_time, print_table, rng  # noqa: E402

import refcompress.kernels as K  # noqa: E402
from refcompress.kernels import nnops  # noqa: E402

ROW_SHAPES = [(32 * 24, 384), (32 * 116, 384), (32 * 116, 1536)]
ATTN_SHAPES = [(32, 12, 24, 24), (32, 12, 116, 116)]


# ---- plain NumPy float32 versions (the peer every NumPy user has) ---------------------------

_P = np.float32(0.3275911)
_A = [np.float32(a) for a in (0.254829592, -0.284496736, 1.421413741, -1.453152027, 1.061405429)]


def gelu_f32(x):
    a = np.abs(x) * np.float32(np.sqrt(0.5))
    t = np.float32(1) / (np.float32(1) + _P * a)
    q = t * (_A[0] + t * (_A[1] + t * (_A[2] + t * (_A[3] + t * _A[4])))) * np.exp(-a * a)
    return np.float32(0.5) * x * np.where(x < 0, q, np.float32(2) - q)


def layer_norm_f32(x, w, b, eps, residual=None):
    s = x if residual is None else x + residual
    m = s.mean(-1, keepdims=True)
    d = s - m
    v = (d * d).mean(-1, keepdims=True)
    return d / np.sqrt(v + np.float32(eps)) * w + b


def softmax_f32(x, mask):
    z = x + mask
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def row(name, shape, ours, reference, plain, threads):
    t_ours = {}
    for t in threads:
        with K.use(threads=t):
            t_ours[t] = median_time(ours)
    t_ref = median_time(reference)
    t_np = median_time(plain)
    cells = [name, "x".join(map(str, shape))]
    cells += [f"{t_ours[t] * 1e6:.0f}" for t in threads]
    cells += [f"{t_ref * 1e6:.0f}", f"{t_np * 1e6:.0f}"]
    cells += [fmt_ratio(t_ref / t_ours[t]) for t in threads]
    cells += [fmt_ratio(t_np / t_ours[t]) for t in threads]
    return cells


def attention_unfused(q, k, v, heads, scale, mask):
    """nn.MultiHeadSelfAttention's training-mode path: split, matmul, softmax, matmul, merge."""
    B, S, H = q.shape
    d = H // heads
    split = lambda t: t.reshape(B, S, heads, d).transpose(0, 2, 1, 3)  # noqa: E731
    scores = np.matmul(split(q), split(k).transpose(0, 1, 3, 2))
    scores *= np.float32(scale)
    p = K.softmax(scores, mask[:, None, None, :])
    return np.matmul(p, split(v)).transpose(0, 2, 1, 3).reshape(B, S, H)


def attention_rows(g, seqs, threads):
    rows = []
    for S in seqs:
        q, k, v = ((g.standard_normal((32, S, 384)) * 2).astype(np.float32) for _ in range(3))
        lengths = g.integers(S // 2, S + 1, 32)
        mask = np.where(np.arange(S)[None, :] < lengths[:, None], 0.0, np.finfo(np.float32).min)
        mask = mask.astype(np.float32)
        scale = 1.0 / np.sqrt(32)
        cells = ["attention", f"32x{S}x384 h12"]
        t_ours, t_np = {}, {}
        for t in threads:
            with K.use(threads=t):
                t_ours[t] = median_time(lambda: K.attention(q, k, v, 12, scale, mask))
                with blas_threads(t):
                    t_np[t] = median_time(lambda: attention_unfused(q, k, v, 12, scale, mask))
        cells += [f"{t_ours[t] * 1e6:.0f}" for t in threads] + [f"{t_np[t] * 1e6:.0f}" for t in threads]
        cells += [fmt_ratio(t_np[t] / t_ours[t]) for t in threads]
        rows.append(cells)
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="the small shapes only")
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    args = ap.parse_args(argv)
    info = K.available()
    print(f"variants: gelu={info['ops']['gelu']['selected'] or 'numpy'} "
          f"layer_norm={info['ops']['layer_norm']['selected'] or 'numpy'} "
          f"softmax={info['ops']['softmax']['selected'] or 'numpy'}; max threads {info['max_threads']}")
    print()
    g = rng(0)
    rows = []
    th = args.threads
    row_shapes = ROW_SHAPES[:1] if args.quick else ROW_SHAPES
    attn_shapes = ATTN_SHAPES[:1] if args.quick else ATTN_SHAPES
    for shape in row_shapes:
        x = (g.standard_normal(shape) * 2).astype(np.float32)
        rows.append(row("gelu", shape, lambda: K.gelu(x), lambda: nnops.gelu_reference(x),
                        lambda: gelu_f32(x), th))
    for shape in row_shapes:
        x = g.standard_normal(shape).astype(np.float32)
        r = g.standard_normal(shape).astype(np.float32)
        w = g.standard_normal(shape[-1]).astype(np.float32)
        b = g.standard_normal(shape[-1]).astype(np.float32)
        rows.append(row("layer_norm", shape, lambda: K.layer_norm(x, w, b, 1e-12),
                        lambda: nnops.layer_norm_reference(x, w, b, 1e-12),
                        lambda: layer_norm_f32(x, w, b, 1e-12), th))
        rows.append(row("layer_norm(x+res)", shape, lambda: K.layer_norm(x, w, b, 1e-12, residual=r),
                        lambda: nnops.layer_norm_reference(x, w, b, 1e-12, residual=r),
                        lambda: layer_norm_f32(x, w, b, 1e-12, r), th))
    for shape in attn_shapes:
        B, _, _, T = shape
        x = (g.standard_normal(shape) * 4).astype(np.float32)
        lengths = g.integers(T // 2, T + 1, B)
        mask = np.where(np.arange(T)[None, :] < lengths[:, None], 0.0, -np.inf).astype(np.float32)
        mask = mask[:, None, None, :]
        rows.append(row("softmax+mask", shape, lambda: K.softmax(x, mask), lambda: nnops.softmax_reference(x, mask),
                        lambda: softmax_f32(x, mask), th))
    print_table(
        ["op", "shape"] + [f"ours {t}t us" for t in th] + ["reference us", "numpy f32 us"]
        + [f"vs ref {t}t" for t in th] + [f"vs f32 {t}t" for t in th],
        rows,
        title="float32 transformer ops (median us); ratios = their time / ours",
    )
    print()
    print(f"attention={info['ops']['attention']['selected'] or 'numpy'}; NumPy BLAS: {blas_report()}")
    print_table(
        ["op", "shape"] + [f"fused {t}t us" for t in th] + [f"numpy path {t}t us" for t in th]
        + [f"ratio {t}t" for t in th],
        attention_rows(g, [24] if args.quick else [24, 116], th),
        title="fused attention vs nn's unfused path (split + matmul + softmax + matmul + merge), median us; "
              "ratio = numpy path / fused",
    )


if __name__ == "__main__":
    main()
