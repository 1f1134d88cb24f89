"""all-MiniLM-L6-v2 forward speed: NumPy fp32, refcompress W8A8 on the integer kernels, and
onnxruntime fp32 / int8 (quantize_dynamic of the same graph) and onnxruntime running our own
W8A8 model exported by refcompress.io.export_onnx, when installed, in one run.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE .venv/bin/python benchmarks/bench_minilm.py [--quick]

Batches: 32 rows of real English (calibration sentences joined and truncated) of exactly 24
and exactly 116 tokens, so no row is padding.  "fp32" is refcompress's float32 forward (NumPy BLAS for the
GEMMs, the C element-wise ops); the pure NumPy reference backend is slower still (its
GELU and LayerNorm compute in float64).  The timed call is the transformer forward
(embeddings and 6 encoder layers -> last hidden state); pooling is not timed.  Every
column runs with the same thread count (2 = the machine's cores; onnxruntime's intra-op
threads, our OpenMP threads and NumPy's BLAS threads); the five take turns over rounds and
each time is the median of its rounds (_harness.alternating_medians, with a pause before
each so that the previous one's idle pool has stopped spinning).  Ratios are *their time /
ours*.
The W8A8 model is the one the fidelity table scores ("W8A8 per-token SmoothQuant": alpha 0.5,
per-token activations; another with --method); its fidelity on the evaluation set is
printed too, and so is how far onnxruntime running its exported graph ("ort ours") is from
refcompress on the evaluation sentences (last hidden state at real tokens, and the pooled
unit embeddings).  "ort ours" is the default export (int8 weights: onnxruntime's u8 x s8
kernels, exact on CPUs with VNNI; on x86 CPUs without VNNI they can saturate, and
weight_dtype="uint8", exact everywhere, measured 1.31-1.39x slower on this VNNI machine --
docs/io.md).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from _harness import (SETTLE, alternating_medians, blas_report, blas_threads, fmt_ratio, optional,  # noqa: E402
                      print_table)

import refcompress.kernels as K  # noqa: E402
from refcompress.bert import Tokenizer, l2_normalize, load_minilm, mean_pool, minilm_path  # noqa: E402
from refcompress.data import CALIBRATION_SENTENCES, EVAL_SENTENCES  # noqa: E402
from refcompress.pipeline.metrics import embedding_fidelity  # noqa: E402
from refcompress.pipeline.transformer import compress_encoder  # noqa: E402


def batch_of(tokens: int, rows: int = 32) -> dict:
    """``rows`` texts of exactly ``tokens`` tokens: consecutive calibration sentences joined
    until long enough, then truncated."""
    tok = Tokenizer(os.path.join(minilm_path(), "tokenizer.json"), max_seq_length=tokens)
    texts, i = [], 0
    while len(texts) < rows:
        text = ""
        while True:
            text = (text + " " + CALIBRATION_SENTENCES[i % len(CALIBRATION_SENTENCES)]).strip()
            i += 1
            if tok([text])["attention_mask"].sum() >= tokens:
                break
        texts.append(text)
    b = tok(texts)
    assert b["input_ids"].shape == (rows, tokens) and b["attention_mask"].all()
    return b


def ort_sessions(model, ours, threads: int):
    """onnxruntime fp32 and int8 (quantize_dynamic, per-channel weights) sessions of the
    exported float model, and a session of our compressed model ``ours`` exported as it is,
    or (None, None, None) when onnx / onnxruntime are absent."""
    ort, onnx = optional("onnxruntime"), optional("onnx")
    if ort is None or onnx is None:
        return None, None, None
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from refcompress.io import export_onnx

    tmp = tempfile.mkdtemp()
    fp32 = export_onnx(model, os.path.join(tmp, "minilm.onnx"))
    int8 = os.path.join(tmp, "minilm.int8.onnx")
    quantize_dynamic(fp32, int8, weight_type=QuantType.QInt8, per_channel=True)
    mine = export_onnx(ours, os.path.join(tmp, "minilm.ours.onnx"))
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    return tuple(ort.InferenceSession(p, so, providers=["CPUExecutionProvider"]) for p in (fp32, int8, mine))


def ort_agreement(q, sess) -> str:
    """Max |difference| between onnxruntime running our exported graph and refcompress (C
    kernels) on the evaluation sentences (one padded batch; padded positions are not
    compared), beside the same between refcompress's own NumPy reference and C kernels:
    the float ops around the exact integer layers differ in the last bits between any two
    implementations, and where that meets a rounding boundary an activation code flips."""
    b = q.tokenizer(list(EVAL_SENTENCES))
    feed = {k: b[k] for k in ("input_ids", "attention_mask", "token_type_ids")}
    args = (b["input_ids"], b["attention_mask"], b["token_type_ids"])
    want = q.model(*args)
    with K.use("numpy"):
        ref = q.model(*args)
    got = sess.run(None, feed)[0]
    real = b["attention_mask"].astype(bool)
    emb = lambda h: l2_normalize(mean_pool(h, b["attention_mask"]))  # noqa: E731
    line = lambda a: (f"max |diff| last hidden state {np.abs(a - want)[real].max():.2e}, "  # noqa: E731
                      f"unit embeddings {np.abs(emb(a) - emb(want)).max():.2e}, "
                      f"min cos {np.min(np.sum(emb(a) * emb(want), axis=1)):.5f}")
    return (f"vs refcompress (C kernels) on {len(EVAL_SENTENCES)} sentences (max |hidden| "
            f"{np.abs(want[real]).max():.1f}):\n  ort running our exported graph: {line(got)}\n"
            f"  refcompress NumPy reference:   {line(ref)}")


@contextlib.contextmanager
def _both(first, second):
    with first, second:
        yield


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer repeats")
    ap.add_argument("--threads", type=int, nargs="*", default=[2], help="thread counts to measure")
    ap.add_argument("--method", default="W8A8 per-token SmoothQuant",
                    help="the fidelity-table method for the int8 model")
    args = ap.parse_args(argv)
    min_time, rounds = (0.1, 2) if args.quick else (0.3, 5)  # per round

    enc = load_minilm()
    print(f"NumPy BLAS: {blas_report()}")
    info = K.available()
    print(f"kernels: C built {info['c_built']}, OpenMP {info['openmp']}, qgemm variant "
          f"{info['ops']['qgemm']['selected']}")
    q = compress_encoder(enc, args.method)
    f = embedding_fidelity(enc.encode(list(EVAL_SENTENCES)), q.encode(list(EVAL_SENTENCES)))
    print(f"int8 model: {args.method}: min cos {f['min_cos']:.4f}, "
          f"mean cos {f['mean_cos']:.4f}, Spearman {f['spearman']:.4f} on {len(EVAL_SENTENCES)} sentences")

    rows = []
    for i, threads in enumerate(args.threads):
        fp32_sess, int8_sess, ours_sess = ort_sessions(enc.model, q.model, threads)
        if ours_sess is not None and i == 0:
            print(ort_agreement(q, ours_sess))
        for tokens in (24, 116):
            b = batch_of(tokens)
            args3 = (b["input_ids"], b["attention_mask"], b["token_type_ids"])
            feed = {k: b[k] for k in ("input_ids", "attention_mask", "token_type_ids")}
            # fp32: NumPy's BLAS does the GEMMs with `threads` threads; our element-wise C
            # ops run on one thread there, because OpenBLAS's idle workers spin for a while
            # after each call and two thread pools on 2 cores slow each other 2x.
            # int8: no BLAS call is left in the forward; our kernels get every thread.
            ort_run = lambda sess: None if sess is None else (lambda: sess.run(None, feed), None)  # noqa: E731
            t_np, t_q, t_of, t_oq, t_oo = alternating_medians([
                (lambda: enc.model(*args3), lambda: _both(blas_threads(threads), K.use(threads=1))),
                (lambda: q.model(*args3), lambda: _both(blas_threads(1), K.use(threads=threads))),
                ort_run(fp32_sess), ort_run(int8_sess), ort_run(ours_sess),
            ], rounds=rounds, min_time=min_time, settle=SETTLE if threads > 1 else 0)
            ratio = lambda t: None if t is None else t / t_q  # noqa: E731
            ms = lambda t: "-" if t is None else f"{t * 1e3:.1f}"  # noqa: E731
            rows.append([f"32 x {tokens}", threads, ms(t_np), ms(t_q), ms(t_of), ms(t_oq), ms(t_oo),
                         fmt_ratio(t_np / t_q), fmt_ratio(ratio(t_of)), fmt_ratio(ratio(t_oq)),
                         fmt_ratio(ratio(t_oo))])
    print_table(["batch", "thr", "fp32 ms", "ours int8 ms", "ort f32 ms", "ort int8 ms", "ort ours ms",
                 "vs fp32", "vs ort f32", "vs ort int8", "vs ort ours"], rows,
                title="all-MiniLM-L6-v2 forward (embeddings + 6 layers); ratios = their time / ours")
    print("Goal: faster than onnxruntime fp32 (vs ort f32 > 1) and within 1.25x of onnxruntime int8 "
          "(vs ort int8 >= 0.80).")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
