"""Sparse Linear speed: spmm_csr / spmm_nm vs dense NumPy fp32 (x @ W.T), scipy.sparse CSR and
torch CSR matmul (each when installed), single- and two-thread, in one run.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE .venv/bin/python benchmarks/bench_spmm.py [--quick]

Weights are random unstructured masks at each sparsity (the fraction of zeros) of a normal
W [out, in]; x is [batch, in].  Ours is the packed call SparseLinear runs,
``spmm_csr(x, pack_csr(...))``: the CSR is built by csr_from_dense and validated and laid out
once by pack_csr; each timed call checks x and crosses into C.  For 2:4 it is NMLinear's
``spmm_nm(x, pack_nm(...))`` (the positions checked once).  Peers get their natural layout: scipy computes W @ x.T
(single-threaded whatever the column says), torch a sparse CSR tensor @ x.T with
torch.set_num_threads matched; neither result is transposed back.  Ratios are their time
divided by ours (> 1: ours is faster).  "break-even" is the lowest measured sparsity from
which ours beats dense at every higher sparsity too; the goal line judges a batch's
break-even only when the goal's sparsity (80 % at batch 1, else 50 %) was among
those measured, and says so otherwise.  For one weight shape, thread count and
batch, dense and every sparsity's ours and peers take turns over --rounds rounds, and each
time is the median of its rounds (_harness.alternating_medians), so load from other jobs
hits them alike.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from _harness import (SETTLE, alternating_medians, blas_report, blas_threads, fmt_ratio,  # noqa: E402
                      optional, print_table, rng)

import refcompress.kernels as K  # noqa: E402

SHAPES = [(1024, 1024), (3072, 768)]  # (out, in)
BATCHES = [1, 16, 64, 256]
SPARSITIES = [0.5, 0.7, 0.8, 0.9, 0.95, 0.98]


def masked_weight(g, out_f, in_f, sparsity):
    W = g.standard_normal((out_f, in_f)).astype(np.float32)
    W[g.random((out_f, in_f)) < sparsity] = 0.0
    return W


def scipy_peer(c, x):
    sp = optional("scipy.sparse")
    if sp is None:
        return None
    A = sp.csr_matrix((c.values, c.indices.astype(np.int32), c.indptr), shape=c.shape)
    xt = x.T
    return lambda: A @ xt


def torch_peer(c, x, threads):
    torch = optional("torch")
    if torch is None:
        return None
    torch.set_num_threads(threads)
    with warnings.catch_warnings():  # "beta state" / "invariant checks" notices, once per tensor
        warnings.simplefilter("ignore", UserWarning)
        A = torch.sparse_csr_tensor(torch.from_numpy(c.indptr), torch.from_numpy(c.indices.astype(np.int64)),
                                    torch.from_numpy(c.values), size=c.shape)
    xt = torch.from_numpy(np.ascontiguousarray(x.T))

    def run():
        with torch.no_grad():
            return A @ xt

    return run


def check_agrees(ours, peer_fn, what):
    # Same product within float tolerance: a peer that computes something else is no peer.
    got = np.asarray(peer_fn()).T
    if not np.allclose(got, ours, rtol=1e-4, atol=1e-3):
        raise AssertionError(f"{what} disagrees with spmm_csr")


def break_even(ratios):
    """Lowest sparsity s with ratio >= 1 at s and every higher measured sparsity."""
    best = None
    for s, r in sorted(ratios.items(), reverse=True):
        if r is None or r < 1:
            break
        best = s
    return "none" if best is None else f"{best:.0%}"


def break_even_goal(ratios, out_f, in_f, threads, batch):
    """The issue's break-even goal for one cell (break-even at most 80 % at batch 1, else 50 %;
    the issue asks 50 % from batch 16) as ("break-even", out, in, threads, batch, ok, break-even).

    ok is None when the goal's sparsity is not among the measured ones (--quick,
    --sparsities): the break-even then lands on a neighbouring measured sparsity, and whether
    ours beats dense at the goal's own sparsity is not known.
    """
    goal = 0.8 if batch == 1 else 0.5
    be = break_even(ratios)
    measured = any(abs(s - goal) < 1e-9 for s in ratios)
    ok = (be != "none" and float(be.rstrip("%")) / 100 <= goal + 1e-9) if measured else None
    return ("break-even", out_f, in_f, threads, batch, ok, be)


def goal_line(name, cells):
    """One goal's summary line; cells whose verdict is None were not judged and are listed
    apart, so a sparsity left out of the run never counts as a miss."""
    judged = [gl for gl in cells if gl[5] is not None]
    missed = [f"{o}x{i} thr{t} b{b}: {v}" for _, o, i, t, b, ok, v in judged if not ok]
    unmeasured = [f"{o}x{i} thr{t} b{b}" for _, o, i, t, b, ok, _v in cells if ok is None]
    not_measured = f"not measured (goal's sparsity not in this run): {', '.join(unmeasured)}"
    if unmeasured and not judged:
        return f"  {name}: {not_measured}"
    return (f"  {name}: met in {len(judged) - len(missed)} of {len(judged)} cells"
            + (f"; missed: {', '.join(missed)}" if missed else "")
            + (f"; {not_measured}" if unmeasured else ""))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="one shape, batches 1 and 64, 70/90%% sparsity, 1 thread")
    ap.add_argument("--threads", type=int, nargs="+", default=None)
    ap.add_argument("--shapes", nargs="+", default=None, metavar="OUTxIN", help="only these weights, e.g. 1024x1024")
    ap.add_argument("--batches", type=int, nargs="+", default=None, help="only these batch sizes")
    ap.add_argument("--sparsities", type=float, nargs="+", default=None, help="only these, e.g. 0.95 0.98")
    ap.add_argument("--no-nm", action="store_true", help="skip the 2:4 table")
    ap.add_argument("--no-csr", action="store_true", help="skip the CSR tables (only 2:4)")
    ap.add_argument("--rounds", type=int, default=5,
                    help="rounds in which dense, ours and the peers of one weight and batch take turns "
                         "(each time is the median of its rounds; default 5, at most 3 with --quick)")
    args = ap.parse_args(argv)
    shapes, batches, sparsities = SHAPES, BATCHES, SPARSITIES
    threads_list = args.threads or [1, 2]
    min_time, rounds = 0.04, args.rounds  # per round
    if args.quick:
        shapes, batches, sparsities = SHAPES[:1], [1, 64], [0.7, 0.9]
        threads_list = args.threads or [1]
        min_time, rounds = 0.02, min(rounds, 3)
    if args.shapes:
        shapes = [tuple(int(v) for v in s.lower().split("x")) for s in args.shapes]
    batches = args.batches or batches
    sparsities = sorted(args.sparsities) if args.sparsities else sparsities
    torch = optional("torch")
    print(f"NumPy BLAS: {blas_report()}")
    print(f"refcompress spmm_csr variant: {K.available()['ops']['spmm_csr']['selected'] or 'numpy'}")
    print(f"peers: scipy {'yes' if optional('scipy.sparse') else 'not installed'}, "
          f"torch {torch.__version__ if torch else 'not installed'}")
    print()
    g = rng(0)
    rows, summary, goals = [], [], []
    worst_peer = {}
    for out_f, in_f in ([] if args.no_csr else shapes):
        Wd = {s: masked_weight(g, out_f, in_f, s) for s in sparsities}
        csr = {s: K.csr_from_dense(Wd[s]) for s in sparsities}
        packed = {s: K.pack_csr(*csr[s]) for s in sparsities}
        for threads in threads_list:
            for batch in batches:
                x = g.standard_normal((batch, in_f)).astype(np.float32)
                W0 = Wd[sparsities[0]]
                blas, ours = (lambda: blas_threads(threads)), (lambda: K.use(threads=threads))
                timed = [(lambda: x @ W0.T, blas)]
                for s in sparsities:
                    c, p = csr[s], packed[s]
                    with K.use(threads=threads):
                        got = K.spmm_csr(x, p)
                    sp, th = scipy_peer(c, x), torch_peer(c, x, threads)
                    if sp:
                        check_agrees(got, sp, "scipy")
                    if th:
                        check_agrees(got, th, "torch")
                    timed += [(lambda p=p: K.spmm_csr(x, p), ours), (sp, None) if sp else None,
                              (th, None) if th else None]
                times = alternating_medians(timed, rounds=rounds, min_time=min_time,
                                            settle=SETTLE if threads > 1 else 0)
                t_dense = times[0]
                ratios = {}
                for i, s in enumerate(sparsities):
                    t_ours, t_sp, t_th = times[1 + 3 * i:4 + 3 * i]
                    best = min([t for t in (t_sp, t_th) if t], default=None)
                    ratios[s] = t_dense / t_ours
                    if best and s >= 0.7:
                        worst_peer[(out_f, in_f, threads, batch, s)] = best / t_ours
                    rows.append([f"{out_f}x{in_f}", threads, batch, f"{s:.0%}", f"{t_ours * 1e6:.0f}",
                                 f"{t_dense * 1e6:.0f}", fmt_ratio(t_dense / t_ours),
                                 fmt_ratio(t_sp / t_ours if t_sp else None),
                                 fmt_ratio(t_th / t_ours if t_th else None),
                                 fmt_ratio(best / t_ours if best else None)])
                summary.append([f"{out_f}x{in_f}", threads, batch, break_even(ratios),
                                fmt_ratio(ratios.get(0.9))])
                goals.append(break_even_goal(ratios, out_f, in_f, threads, batch))
                if batch >= 16 and 0.9 in ratios:
                    goals.append(("5x at 90%", out_f, in_f, threads, batch, ratios[0.9] >= 5, f"{ratios[0.9]:.2f}x"))
    print_table(["W (out x in)", "thr", "batch", "sparsity", "ours us", "dense us", "vs dense",
                 "vs scipy", "vs torch", "vs best peer"], rows,
                title="spmm_csr: y = x @ W.T with W in CSR; ratios = their time / ours")
    print_table(["W (out x in)", "thr", "batch", "break-even sparsity", "vs dense at 90%"], summary,
                title="break-even: lowest sparsity from which spmm_csr beats dense NumPy fp32")

    # N:M 2:4 against dense (the same dense product, half the weights stored).
    nm_rows = []
    for out_f, in_f in ([] if args.no_nm else shapes):
        W = g.standard_normal((out_f, in_f)).astype(np.float32)
        grp = W.reshape(out_f, -1, 4)
        np.put_along_axis(grp, np.argsort(np.abs(grp), axis=-1)[..., :2], 0.0, axis=-1)
        nm = K.pack_nm(*K.nm_from_dense(W, 2, 4))  # what NMLinear runs: positions checked once
        for threads in threads_list:
            for batch in batches:
                x = g.standard_normal((batch, in_f)).astype(np.float32)
                t_dense, t_nm = alternating_medians([(lambda: x @ W.T, lambda: blas_threads(threads)),
                                                     (lambda: K.spmm_nm(x, nm), lambda: K.use(threads=threads))],
                                                    rounds=rounds, min_time=min_time,
                                                    settle=SETTLE if threads > 1 else 0)
                nm_rows.append([f"{out_f}x{in_f}", threads, batch, f"{t_nm * 1e6:.0f}", f"{t_dense * 1e6:.0f}",
                                fmt_ratio(t_dense / t_nm)])
                if batch >= 16:
                    goals.append(("2:4 1.6x dense", out_f, in_f, threads, batch, t_dense / t_nm >= 1.6,
                                  f"{t_dense / t_nm:.2f}x"))
    print_table(["W (out x in)", "thr", "batch", "2:4 us", "dense us", "vs dense"], nm_rows,
                title="spmm_nm 2:4 vs dense NumPy fp32")

    print("Goals (from the pruning issue):")
    for name in ("break-even", "5x at 90%", "2:4 1.6x dense"):
        print(goal_line(name, [gl for gl in goals if gl[0] == name]))
    if worst_peer:
        key = min(worst_peer, key=worst_peer.get)
        n_ok = sum(v >= 1.5 for v in worst_peer.values())
        print(f"  >= 1.5x best peer at >= 70%: met in {n_ok} of {len(worst_peer)} cells; "
              f"worst {worst_peer[key]:.2f}x at {key[0]}x{key[1]} thr{key[2]} b{key[3]} {key[4]:.0%}")
    else:
        print("  >= 1.5x best peer: no peer installed")


if __name__ == "__main__":
    main()
