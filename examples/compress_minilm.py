"""Compress all 36 encoder Linear layers of all-MiniLM-L6-v2 with every method and print how
close each compressed model's sentence embeddings stay to the float model's.

    .venv/bin/python examples/compress_minilm.py [--methods NAME ...] [--json out.json]

Evaluation: the 73 sentences of refcompress.data.EVAL_SENTENCES (paraphrase pairs, unrelated
sentences, 3 to 108 tokens); calibration: the disjoint CALIBRATION_SENTENCES.  Columns: min
and mean cosine between compressed and float embeddings of the same sentence, Spearman
correlation of all pairwise similarities against the float model's, the seconds the
compression took, and the verdict against the transformer issue's goals.
"""

from __future__ import annotations

import argparse
import json
import sys

from refcompress.bert import load_minilm
from refcompress.data import CALIBRATION_SENTENCES, EVAL_SENTENCES
from refcompress.io import atomic_write, check_output_path
from refcompress.pipeline.transformer import METHODS, fidelity_table

#: The issue's goals: (kind, threshold, baseline method for "halve (1 - mean cos)").
GOALS = {
    "W8A8 per-token SmoothQuant": ("min", 0.99, None),
    "W8A8 static SmoothQuant": ("min", 0.99, None),
    "int4 per-channel GPTQ": ("min", 0.95, None),
    "int4 g32 GPTQ": ("min", 0.97, None),
    "int4 per-channel GPTQ rotated": ("min", 0.95, None),
    "int4 per-channel AWQ": ("min", 0.95, None),
    "int4 g32 AWQ": ("min", 0.97, None),
    "50% SparseGPT": ("halve", None, "50% magnitude"),
    "50% Wanda": ("halve", None, "50% magnitude"),
    "50% Wanda + bias correction": ("halve", None, "50% magnitude"),
    "50% Wanda + weight update": ("halve", None, "50% magnitude"),
    "2:4 SparseGPT": ("halve", None, "2:4 magnitude"),
    "2:4 Wanda": ("halve", None, "2:4 magnitude"),
    "2:4 Wanda + bias correction": ("halve", None, "2:4 magnitude"),
    "2:4 Wanda permuted + bias correction": ("halve", None, "2:4 magnitude"),
    "2:4 Wanda + weight update": ("halve", None, "2:4 magnitude"),
    "data-aware SVD 50% FFN": ("halve", None, "SVD 50% FFN"),
}


def verdict(name, row, by_name):
    goal = GOALS.get(name)
    if goal is None:
        return ""
    kind, threshold, base = goal
    if kind == "min":
        ok = row.min_cos >= threshold
        return f"min cos >= {threshold}: {'met' if ok else 'MISSED'}"
    if base not in by_name:
        return f"(run {base!r} to compare)"
    ratio = (1 - row.mean_cos) / max(1 - by_name[base].mean_cos, 1e-12)
    return f"1-mean = {ratio:.2f} x {base}: {'met' if ratio <= 0.5 else 'MISSED'} (<= 0.5)"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--methods", nargs="*", default=None, help="subset of " + str(list(METHODS)).replace("%", "%%"))
    ap.add_argument("--json", help="also write the rows as JSON here")
    args = ap.parse_args(argv)
    names = args.methods or list(METHODS)
    unknown = [n for n in names if n not in METHODS]
    if unknown:
        ap.error(f"unknown methods {unknown}; choose from {list(METHODS)}")
    if args.json is not None:
        try:
            check_output_path(args.json, "--json")  # before minutes of work, not after
        except ValueError as e:
            ap.error(str(e))

    encoder = load_minilm()
    print(f"all-MiniLM-L6-v2: {len(EVAL_SENTENCES)} evaluation sentences, "
          f"{len(CALIBRATION_SENTENCES)} calibration sentences (disjoint)\n")
    w = max(28, *map(len, names))
    head = f"{'method':<{w}} {'min cos':>8} {'mean cos':>8} {'Spearman':>8} {'seconds':>7}  goal"
    print(head)
    print("-" * len(head))
    rows = {}

    def show(row):
        rows[row.method] = row
        print(f"{row.method:<{w}} {row.min_cos:8.4f} {row.mean_cos:8.4f} {row.spearman:8.4f} {row.seconds:7.1f}  "
              f"{verdict(row.method, row, rows)}", flush=True)

    fidelity_table(encoder, names, progress=show)
    if args.json:
        with atomic_write(args.json, "--json") as f:
            f.write(json.dumps([vars(r) for r in rows.values()], indent=2).encode("utf-8"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
