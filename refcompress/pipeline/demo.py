"""``refcompress demo``: train (or load) the two reference models on digits and report them.

For each reference model (:mod:`refcompress.models`) and each seed in
``seed, seed + 1, ..., seed + seeds - 1`` the demo trains the model with its recipe, or,
when ``out_dir`` holds a verified file saved by an earlier run with the same recipe, loads
it (:mod:`refcompress.io`; a damaged or out-of-date file is retrained and replaced).  It
prints one table row per model:

    model | parameters | stored bytes | MACs per sample | test accuracy |
    latency at batch 1 | latency at batch 64

Parameters, bytes, MACs and latency are those of the first seed's model
(:mod:`refcompress.pipeline.metrics`); latency is the median over ``latency_repeats``
forward passes in eval mode, in milliseconds.  With several seeds the accuracy is
"mean ± std" over the seeds (sample standard deviation, ddof = 1).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time

import numpy as np

from .. import io as rc_io
from .._validation import check_int
from ..data import load_digits
from ..errors import ArgumentError, CorruptFileError, DTypeError
from ..models import REFERENCE_MODELS, TRAINING_RECIPE, blas_threads, train_reference
from .metrics import accuracy, count_macs, count_parameters, measure_latency, stored_bytes

__all__ = ["run", "add_arguments", "run_from_args", "main", "format_table"]

DEFAULT_OUT_DIR = "artifacts"


@contextlib.contextmanager
def _thread_limit(threads):
    """threads=None: one BLAS thread, C kernels unchanged; threads=N: N for both."""
    if threads is None:
        with blas_threads(1):
            yield
        return
    from .. import kernels

    with kernels.use(threads=threads), blas_threads(threads):
        yield


def _recipe(name, epochs):
    recipe = dict(TRAINING_RECIPE[name])
    if epochs is not None:
        recipe["epochs"] = epochs
    return recipe


def _cached_model(path, name, seed, recipe, log):
    """The model saved at ``path`` if it is intact and was trained by ``recipe``, else None."""
    if not os.path.exists(path):
        return None
    try:
        user = rc_io.read_metadata(path)["user"]
        if user.get("model") != name or user.get("seed") != seed or user.get("recipe") != recipe:
            log(f"  {path}: trained with another recipe; retraining")
            return None
        return rc_io.load(path)
    except CorruptFileError as e:
        log(f"  {path}: {e}; retraining")
        return None


def _obtain(name, seed, data, out_dir, use_cache, epochs, log):
    recipe = _recipe(name, epochs)
    path = os.path.join(out_dir, f"{name}-seed{seed}.npz") if out_dir is not None else None
    if use_cache and path is not None:
        model = _cached_model(path, name, seed, recipe, log)
        if model is not None:
            log(f"  {name} seed {seed}: loaded {path}")
            return model
    t0 = time.perf_counter()
    model, acc = train_reference(name, seed, epochs=epochs, data=data, threads=None)
    seconds = time.perf_counter() - t0
    log(f"  {name} seed {seed}: trained in {seconds:.1f} s, test accuracy {100 * acc:.2f} %")
    if use_cache and path is not None:
        os.makedirs(out_dir, exist_ok=True)
        rc_io.save(model, path, metadata={"model": name, "seed": seed, "recipe": recipe,
                                          "test_accuracy": acc, "train_seconds": seconds})
    return model


def format_table(rows) -> str:
    """The demo's table (plain text) from :func:`run`'s rows."""
    head = ("model", "parameters", "stored bytes", "MACs/sample", "test accuracy",
            "latency b=1", "latency b=64")
    lines = []
    for r in rows:
        accs = np.asarray(r["test_accuracies"]) * 100
        acc = (f"{accs.mean():.2f} ± {accs.std(ddof=1):.2f} % (n={len(accs)})" if len(accs) > 1
               else f"{accs[0]:.2f} %")
        lines.append((r["model"], f"{r['parameters']:,}", f"{r['stored_bytes']:,}",
                      f"{r['macs_per_sample']:,}", acc, f"{1e3 * r['latency_b1_s']:.3f} ms",
                      f"{1e3 * r['latency_b64_s']:.3f} ms"))
    widths = [max(len(h), *(len(l[i]) for l in lines)) for i, h in enumerate(head)]
    fmt = lambda cells: "  ".join(c.ljust(w) if i == 0 else c.rjust(w)  # noqa: E731
                                  for i, (c, w) in enumerate(zip(cells, widths)))
    out = [fmt(head), "  ".join("-" * w for w in widths)]
    out += [fmt(l) for l in lines]
    return "\n".join(out)


def run(seed: int = 0, seeds: int = 1, threads: int | None = None, out_dir=DEFAULT_OUT_DIR, *,
        use_cache: bool = True, epochs: int | None = None, latency_repeats: int = 50,
        stream=None, compress_models: bool = True) -> list:
    """Train or load the reference models, print the report table, return its rows.

    seed, seeds     : the seeds used are seed .. seed + seeds - 1 (seeds >= 1).
    threads         : thread count for the C kernels and NumPy's BLAS (via threadpoolctl)
                      during the whole run; None runs BLAS on one thread (these models'
                      matrices are too small to gain from more, see
                      :func:`refcompress.models.blas_threads`) and leaves the C kernels'
                      setting unchanged.
    out_dir         : directory of the model cache (created when needed), one file per
                      model and seed, ``<model>-seed<k>.npz``; None disables the cache.
    use_cache       : False trains every model and neither reads nor writes files.
    epochs          : override the recipes' maximum epochs (a quick run; the cache keys
                      on the recipe, so such models never replace full ones).
    latency_repeats : timed forward passes per latency median.
    stream          : where the table and progress lines go (default sys.stdout).
    compress_models : then run the headline recipes (:data:`DEMO_RECIPES`) on the first
                      seed's models and print their stage tables.

    Each row is a dict: model, parameters, stored_bytes, macs_per_sample,
    test_accuracies (list, one per seed), latency_b1_s, latency_b64_s (seconds).
    """
    seed = check_int(seed, "seed", min_value=0)
    seeds = check_int(seeds, "seeds", min_value=1)
    if threads is not None:
        threads = check_int(threads, "threads", min_value=1)
    if epochs is not None:
        epochs = check_int(epochs, "epochs", min_value=1)
    latency_repeats = check_int(latency_repeats, "latency_repeats", min_value=1)
    if out_dir is not None and not isinstance(out_dir, (str, os.PathLike)):
        raise DTypeError(f"out_dir: expected a str, os.PathLike or None, got {type(out_dir).__name__}")
    if out_dir is not None and os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise ArgumentError(f"out_dir: {os.fspath(out_dir)!r} exists and is not a directory")
    if not isinstance(use_cache, (bool, np.bool_)):
        raise DTypeError(f"use_cache: expected a bool, got {type(use_cache).__name__}")
    stream = sys.stdout if stream is None else stream

    def log(msg):
        print(msg, file=stream, flush=True)

    data = load_digits()
    rows = []
    with _thread_limit(threads):
        for name in REFERENCE_MODELS:
            models = [_obtain(name, s, data, out_dir, use_cache, epochs, log)
                      for s in range(seed, seed + seeds)]
            first = models[0]
            rows.append({
                "model": name,
                "parameters": count_parameters(first),
                "stored_bytes": stored_bytes(first),
                "macs_per_sample": count_macs(first, data.image_shape),
                "test_accuracies": [accuracy(m, data.X_test, data.y_test) for m in models],
                "latency_b1_s": measure_latency(first, data.X_test[:1], latency_repeats),
                "latency_b64_s": measure_latency(first, data.X_test[:64], latency_repeats),
            })
    log("")
    log(f"digits test split: {len(data.y_test)} images; seeds {seed}..{seed + seeds - 1}")
    log(format_table(rows))
    if compress_models:
        with _thread_limit(threads):
            rows_c = run_recipes(data, out_dir, use_cache, epochs, seed, log)
        for r in rows:
            r["compression"] = rows_c.get(r["model"])
    return rows


#: The headline recipes (refcompress/pipeline/recipes/) and the issue's bars for them:
#: (model, recipe file, minimum compression ratio, maximum accuracy loss in pp).
DEMO_RECIPES = [
    ("mlp_300_100", "deep_compression_mlp.toml", 50.0, 0.5),
    ("small_cnn", "deep_compression_cnn.toml", 20.0, 1.0),
]


def recipe_path(name: str) -> str:
    """Path of a bundled recipe (refcompress/pipeline/recipes/<name>)."""
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), "recipes", name)


def run_recipes(data, out_dir, use_cache, epochs, seed, log) -> dict:
    """Compress the first seed's reference models with the headline recipes; print each
    stage table and a summary line against the bars.  Returns {model: summary dict}."""
    from .compress import compress

    out = {}
    results = {}
    for name, recipe, min_ratio, max_loss in DEMO_RECIPES:
        model = _obtain(name, seed, data, out_dir, use_cache, epochs, log)
        log(f"\ncompressing {name} with {recipe} ...")
        t0 = time.perf_counter()
        result = compress(model, recipe_path(recipe), data, seed=seed)
        log(result.table())
        base, last = result.reports[0], result.reports[-1]
        loss = 100 * (base.accuracy - last.accuracy)
        ok = last.compression >= min_ratio and loss <= max_loss and last.speedup_b1 > 1 and last.speedup_b64 > 1
        log(f"{name}: {last.compression:.1f}x smaller (bar >= {min_ratio:.0f}x), accuracy {100 * last.accuracy:.2f}% "
            f"({-loss:+.2f} pp; bar >= -{max_loss} pp), speedup {last.speedup_b1:.2f}x at batch 1 and "
            f"{last.speedup_b64:.2f}x at batch 64 -> {'meets' if ok else 'MISSES'} the headline "
            f"({time.perf_counter() - t0:.0f} s)")
        log(storage_table(result.final))
        out[name] = {"recipe": recipe, "ratio": last.compression, "loss_pp": loss,
                     "speedup_b1": last.speedup_b1, "speedup_b64": last.speedup_b64, "meets": ok}
        results[name] = (model, result)
    if out_dir is not None:
        written = write_plots(results, data, os.path.join(os.fspath(out_dir), "plots"), log)
        if written:
            log("plots: " + ", ".join(written))
    return out


def storage_table(model) -> str:
    """Per layer of a Deep Compression model: bytes as dense fp32, CSR fp32, fixed-width
    relative indices + codes, Huffman (what is stored), and zlib on the same streams."""
    from .deep_compression import storage_report

    rows = []
    for lname, m in model.named_modules():
        if hasattr(m, "encoded") and hasattr(m, "dense_weight"):
            rows.append([lname] + list(storage_report(m.dense_weight(), m.encoded()).values()))
    if not rows:
        return ""
    heads = ["layer", "dense fp32", "CSR fp32", "relative+codes", "Huffman", "zlib (streams)"]
    cells = [heads] + [[str(r[0])] + [f"{v:,}" for v in r[1:]] for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(heads))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
             for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "weight storage per layer (bytes; Huffman is what the file holds):\n" + "\n".join(lines)


def write_plots(results: dict, data, plot_dir, log) -> list:
    """The demo's PNGs (needs matplotlib; skipped with a note otherwise)."""
    try:
        from . import plots
        plots._pyplot()
    except ImportError:
        log('plots skipped: matplotlib is not installed (pip install "refcompress[demo]")')
        return []
    from .. import prune

    os.makedirs(plot_dir, exist_ok=True)
    written = [plots.pareto({f"{n}: {r.recipe.name}": r for n, (_, r) in results.items()},
                            os.path.join(plot_dir, "pareto.png"))]
    for name, (model, result) in results.items():
        written.append(plots.weight_histograms(model, result.models[-1], os.path.join(plot_dir, f"weights_{name}.png")))
    if "mlp_300_100" in results:
        mlp = results["mlp_300_100"][0]
        written.append(plots.singular_values(mlp, os.path.join(plot_dir, "singular_values_mlp.png")))

        def val_acc(m):
            return accuracy(m, data.X_val, data.y_val)

        sens = prune.sensitivity_analysis(mlp, val_acc, amounts=(0.5, 0.8, 0.9, 0.95, 0.98))
        written.append(plots.sensitivity_curves(sens, os.path.join(plot_dir, "sensitivity_mlp.png")))
    return written


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the demo's options to ``parser`` (the CLI's ``demo`` subcommand)."""
    parser.add_argument("--seed", type=int, default=0, help="first training seed (default 0)")
    parser.add_argument("--seeds", type=int, default=1,
                        help="number of seeds per model; >1 reports mean ± std accuracy (default 1)")
    parser.add_argument("--out", default=DEFAULT_OUT_DIR, metavar="DIR",
                        help=f"model cache directory (default {DEFAULT_OUT_DIR}/)")
    parser.add_argument("--no-cache", action="store_true",
                        help="always train; do not read or write the model cache")
    parser.add_argument("--threads", type=int, default=None,
                        help="threads for the C kernels and NumPy's BLAS (default: 1 BLAS thread, "
                        "kernels unchanged)")
    parser.add_argument("--epochs", type=int, default=None,
                        help="override the recipes' maximum epochs (quick runs)")
    parser.add_argument("--no-compress", action="store_true",
                        help="only train and report the reference models; skip the compression recipes")


def run_from_args(args) -> int:
    """Run the demo from parsed arguments (see :func:`add_arguments`); return exit code 0."""
    run(seed=args.seed, seeds=args.seeds, threads=args.threads, out_dir=args.out,
        use_cache=not args.no_cache, epochs=args.epochs, compress_models=not args.no_compress)
    return 0


def main(argv=None) -> int:
    """``python -m refcompress.pipeline.demo [--seed N] [--seeds K] [--out DIR] [--no-cache]``."""
    parser = argparse.ArgumentParser(prog="refcompress demo", description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run_from_args(parser.parse_args(argv))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
