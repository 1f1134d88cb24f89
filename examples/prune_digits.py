"""Pruning on the digits models, end to end, with the evidence table of docs/pruning.md.

    python examples/prune_digits.py            # mean over 5 seeds
    python examples/prune_digits.py --quick    # 1 seed
    python examples/prune_digits.py --quick --max-epochs 2   # seconds: the script runs, no more

For each seed it trains the two reference models (refcompress.models.train_reference) and

1. unstructured: the 64-300-100-10 MLP pruned gradually to 95 % sparsity while it is
   fine-tuned (Zhu & Gupta's cubic schedule, one step per epoch, global ranking normalised
   per layer), then a final fine-tune; converted to SparseLinear (CSR, spmm_csr);
2. 2:4 on the same MLP: N:M mask, fine-tune with the pattern kept, NMLinear (spmm_nm);
3. structured: half the channels of both convolutions of the CNN removed by first-order
   Taylor importance (measured on training samples), fine-tuned; a smaller dense CNN.

Accuracy is on the test split; every decision (schedule, early stopping) sees only the
training and validation splits.  Latency is the median of repeated forward passes of a
batch of 64 test images in eval mode (refcompress.pipeline.metrics.measure_latency), on the
current kernel backend; stored bytes are the state-dict arrays (metrics.stored_bytes).
"""

from __future__ import annotations

import argparse
import copy
import os
import time

# Single-threaded by default, for both the dense BLAS matmuls and the sparse kernels: on a
# shared machine, spinning OpenMP / BLAS threads measure the neighbours' load, not the
# layers.  Set these variables before running to compare multi-threaded.
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "REFCOMPRESS_THREADS"):
    os.environ.setdefault(_var, "1")

import numpy as np

from refcompress import kernels, nn, prune as P
from refcompress.data import load_digits
from refcompress.models import TRAINING_RECIPE, train_reference
from refcompress.pipeline import metrics

BATCH = 64


# A sparse layer does nnz (CSR) or out * in * N / M (N:M) multiply-adds per sample, not the
# dense in * out that the generic rule for layers with in/out_features would count.
metrics.register_mac_counter(P.SparseLinear, lambda m, inputs, out: out.shape[0] * m.nnz)
metrics.register_mac_counter(P.NMLinear, lambda m, inputs, out: out.shape[0] * m.values.size)


def accuracy(model, d):
    return metrics.accuracy(model, d.X_test, d.y_test)


def fine_tune(model, d, epochs, lr, seed):
    opt = nn.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    nn.fit(model, d.X_train, d.y_train, optimizer=opt, epochs=epochs, batch_size=32, seed=seed,
           scheduler=nn.CosineAnnealingLR(opt, T_max=epochs), progress=False)


def unstructured(dense, d, seed, target=0.95, epochs=40, prune_epochs=30, final_epochs=20):
    """Gradual pruning (Zhu & Gupta's cubic schedule, one pruning step per epoch over
    ``prune_epochs``) inside fine-tuning: prune -> fine-tune -> raise, every epoch; then a
    final fine-tune with the masks fixed."""
    model = copy.deepcopy(dense)
    steps_per_epoch = -(-len(d.y_train) // 32)
    pruner = P.AGPPruner(model, target, n_steps=prune_epochs, frequency=steps_per_epoch,
                         scope="global", normalize="std")
    opt = nn.AdamW(model.parameters(), lr=2e-3, weight_decay=0.0)
    nn.fit(model, d.X_train, d.y_train, optimizer=opt, epochs=epochs, batch_size=32, seed=seed,
           step_fn=pruner.step_fn(), progress=False)
    fine_tune(model, d, final_epochs, 1e-3, seed * 1000 + 999)
    sparsity = P.model_sparsity(model)
    P.to_sparse(model)
    return model, {"sparsity": sparsity}


def nm24(dense, d, seed, epochs=10):
    model = copy.deepcopy(dense)
    P.nm_prune(model, 2, 4)
    fine_tune(model, d, epochs, 1e-3, seed * 1000 + 500)
    P.to_nm(model, 2, 4)
    return model, {"sparsity": 0.5}


def structured(dense, d, seed, amount=0.5, epochs=15):
    model = copy.deepcopy(dense)
    before = sum(model.get_submodule(n).out_channels for n in ("0", "3"))
    rng = np.random.default_rng(seed)
    idx = rng.choice(len(d.y_train), 512, replace=False)
    P.structured_prune(model, amount, "taylor", d.X_train[idx], d.y_train[idx], layers=["0", "3"])
    fine_tune(model, d, epochs, 2e-3, seed * 1000 + 700)
    after = sum(model.get_submodule(n).out_channels for n in ("0", "3"))
    return model, {"channels_removed": 1 - after / before}


def run(seeds, max_epochs=None):
    """Records per model key, one per seed.  ``max_epochs`` caps every training stage (the
    reference models included) for a smoke run; None trains as documented."""
    def cap(epochs):
        return epochs if max_epochs is None else min(epochs, max_epochs)

    d = load_digits()
    x64 = np.ascontiguousarray(d.X_test[:BATCH])
    rows = {k: [] for k in ("mlp", "mlp95", "mlp24", "cnn", "cnn50")}
    for seed in seeds:
        t0 = time.time()
        mlp, _ = train_reference("mlp_300_100", seed, epochs=cap(TRAINING_RECIPE["mlp_300_100"]["epochs"]))
        cnn, _ = train_reference("small_cnn", seed, epochs=cap(TRAINING_RECIPE["small_cnn"]["epochs"]))
        for key, model, extra in (
            ("mlp", mlp, {}),
            # AGP's last step fires at the first batch after prune_epochs epochs, so at
            # least one epoch must follow it or the model stops short of the target.
            ("mlp95", *unstructured(mlp, d, seed, epochs=cap(40), prune_epochs=min(30, cap(40) - 1),
                                    final_epochs=cap(20))),
            ("mlp24", *nm24(mlp, d, seed, epochs=cap(10))),
            ("cnn", cnn, {}),
            ("cnn50", *structured(cnn, d, seed, epochs=cap(15))),
        ):
            rec = {"acc": accuracy(model, d), "bytes": metrics.stored_bytes(model),
                   "params": metrics.count_parameters(model),
                   "macs": metrics.count_macs(model, d.X_test.shape[1:]),
                   "latency": 1e3 * metrics.measure_latency(model, x64, repeats=200, warmup=10)}
            rec.update(extra)
            rows[key].append(rec)
        print(f"seed {seed}: done in {time.time() - t0:.0f} s", flush=True)
    return rows


def mean(rows, key):
    return float(np.mean([r[key] for r in rows]))


def table(rows, n_seeds):
    out = [f"digits test accuracy, mean over {n_seeds} seed(s); latency: median forward of a batch "
           f"of {BATCH} (backend {kernels.get_backend()})", "",
           "| model | test acc % | Δ pp | sparsity / channels removed | stored bytes | MACs / sample "
           "| latency ms | speed-up | goal |",
           "|---|---|---|---|---|---|---|---|---|"]
    base = {"mlp": "mlp", "mlp95": "mlp", "mlp24": "mlp", "cnn": "cnn", "cnn50": "cnn"}
    names = {"mlp": "MLP 64-300-100-10 dense", "mlp95": "MLP unstructured, CSR (SparseLinear)",
             "mlp24": "MLP 2:4 (NMLinear)", "cnn": "CNN dense", "cnn50": "CNN structured (Taylor)"}
    verdicts = {}
    for key, recs in rows.items():
        b = rows[base[key]]
        acc, dacc = 100 * mean(recs, "acc"), 100 * (mean(recs, "acc") - mean(b, "acc"))
        speed = mean(b, "latency") / mean(recs, "latency")
        if key == "mlp95":
            what = f"{100 * mean(recs, 'sparsity'):.1f} % of weights"
            ok = mean(recs, "sparsity") >= 0.95 - 1e-9 and dacc >= -0.5
            goal = f">= 95 %, <= 0.5 pp: {'met' if ok else 'MISSED'}"
        elif key == "mlp24":
            what = "50 % (2:4)"
            ok = dacc >= -0.3
            goal = f"<= 0.3 pp: {'met' if ok else 'MISSED'}"
        elif key == "cnn50":
            what = f"{100 * mean(recs, 'channels_removed'):.0f} % of channels"
            ok = mean(recs, "channels_removed") >= 0.5 and dacc >= -1.0 and speed >= 1.6
            goal = f">= 50 %, <= 1 pp, >= 1.6x: {'met' if ok else 'MISSED'}"
        else:
            what, goal, ok = "-", "-", None
        verdicts[key] = ok
        out.append(f"| {names[key]} | {acc:.2f} | {dacc:+.2f} | {what} | {mean(recs, 'bytes'):,.0f} | "
                   f"{mean(recs, 'macs'):,.0f} | {mean(recs, 'latency'):.3f} | {speed:.2f}x | {goal} |")
    per_seed = ", ".join(f"{k}: " + " ".join(f"{100 * r['acc']:.2f}" for r in v) for k, v in rows.items())
    out += ["", f"per-seed test accuracy %: {per_seed}"]
    return "\n".join(out), verdicts


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="one seed instead of five")
    ap.add_argument("--seeds", type=int, default=None, help="number of seeds (default 5, 1 with --quick)")
    ap.add_argument("--max-epochs", type=int, default=None,
                    help="cap every training stage at this many epochs (at least 2): a smoke run "
                         "in seconds, whose accuracies and verdicts are not the evidence")
    args = ap.parse_args(argv)
    n = args.seeds if args.seeds is not None else (1 if args.quick else 5)
    if n < 1:
        ap.error(f"--seeds: expected at least 1, got {n}")
    if args.max_epochs is not None and args.max_epochs < 2:
        ap.error(f"--max-epochs: expected at least 2 (gradual pruning needs an epoch after its "
                 f"last step), got {args.max_epochs}")
    rows = run(range(n), args.max_epochs)
    text, _ = table(rows, n)
    if args.max_epochs is not None:
        print(f"smoke run: every training stage capped at {args.max_epochs} epochs; not the evidence")
    print(text)


if __name__ == "__main__":
    main()
