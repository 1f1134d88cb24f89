"""The ``compress``, ``report``, ``export`` and ``bench`` commands of ``refcompress`` (wired in cli.py).

MODEL arguments are a file written by :func:`refcompress.io.save`, or the name of a
reference model (``mlp_300_100``, ``small_cnn``), which is then trained first.  The data
set is the embedded digits split.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys

from ..errors import RefcompressError


def _load_model(spec: str, seed: int, data):
    from .. import io as rc_io
    from ..models import REFERENCE_MODELS, train_reference

    if spec in REFERENCE_MODELS:
        print(f"training reference model {spec} (seed {seed}) ...", file=sys.stderr)
        model, acc = train_reference(spec, seed, data=data)
        print(f"trained: test accuracy {100 * acc:.2f}%", file=sys.stderr)
        return model
    if not os.path.exists(spec):
        raise RefcompressError(f"MODEL: no file {spec!r} and not a reference model name {sorted(REFERENCE_MODELS)}")
    return rc_io.load(spec)


def add_compress_arguments(p):
    p.add_argument("model", metavar="MODEL", help="saved model file (.npz / .safetensors), reference model name, or "
                   "'minilm' / a sentence-transformers BERT directory (with a model = \"bert\" recipe)")
    p.add_argument("--recipe", "-r", required=True, help="TOML recipe (see examples/recipes/)")
    p.add_argument("-o", "--output", required=True, help="where to write the compressed model (.npz or .safetensors, by extension)")
    p.add_argument("--report-json", help="also write the per-stage reports as JSON here")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="threads for the C kernels")
    p.add_argument("--progress", action="store_true", help="show training progress bars")


def _check_arguments(args) -> None:
    # Before any work: a bad option found after minutes of compression loses them.
    from .._validation import check_int
    from ..io import check_model_path, check_output_path

    if args.threads is not None:
        check_int(args.threads, "--threads", min_value=1)
    check_model_path(args.output, "--output")
    if args.report_json is not None:
        check_output_path(args.report_json, "--report-json")
        if os.path.abspath(args.report_json) == os.path.abspath(args.output):
            raise RefcompressError("--report-json: the same file as --output; expected another path")


def _threads(args):
    from .. import kernels

    return kernels.use(threads=args.threads) if args.threads is not None else contextlib.nullcontext()


def _write_json(path, obj) -> None:
    from ..io import atomic_write

    with atomic_write(path, "--report-json") as f:
        f.write(json.dumps(obj, indent=2).encode("utf-8"))


def _is_transformer(model_spec: str) -> bool:
    return model_spec == "minilm" or os.path.isdir(model_spec)


def _run_compress_transformer(args) -> int:
    from .. import io as rc_io
    from . import transformer as tr
    from .metrics import stored_bytes

    name, methods = tr.load_transformer_recipe(args.recipe)  # refused before any work if invalid
    _check_arguments(args)
    encoder = tr.load_encoder(args.model)
    with _threads(args):
        compressed = tr.compress_with_recipe(encoder, methods)
        fid = tr.fidelity_lines(encoder, compressed)
    before, after = stored_bytes(encoder.model), stored_bytes(compressed.model)
    print(f"recipe {name} ({args.recipe}) on {args.model}")
    print(f"stored bytes {before:,} -> {after:,} ({before / after:.2f}x)")
    print(f"fidelity on {len(tr.EVAL_SENTENCES)} evaluation sentences: min cos {fid['min_cos']:.4f}, "
          f"mean cos {fid['mean_cos']:.4f}, Spearman {fid['spearman']:.4f}")
    rc_io.save(compressed.model, args.output,
               metadata={"recipe": name, "source": args.model, "fidelity": fid, "kind": "bert"})
    if args.report_json:
        _write_json(args.report_json, {"recipe": name, "fidelity": fid, "bytes_before": before, "bytes_after": after})
    print(f"wrote {args.output}")
    return 0


def run_compress(args) -> int:
    from .. import io as rc_io
    from ..data import load_digits
    from .compress import compress
    from .recipe import load_recipe

    if _is_transformer(args.model):
        return _run_compress_transformer(args)
    recipe = load_recipe(args.recipe)  # refused before any work if invalid
    _check_arguments(args)
    data = load_digits()
    model = _load_model(args.model, args.seed, data)
    with _threads(args):
        result = compress(model, recipe, data, seed=args.seed, progress=args.progress)
    print(f"recipe {recipe.name} ({recipe.source})")
    print(result.table())
    # the file appears only when complete (io.save writes atomically)
    rc_io.save(result.final, args.output, metadata={"recipe": recipe.name, "reports": result.to_dicts()})
    if args.report_json:
        _write_json(args.report_json, result.to_dicts())
    print(f"wrote {args.output}")
    return 0


def add_report_arguments(p):
    p.add_argument("model", metavar="MODEL", help="saved model file (.npz / .safetensors) or reference model name")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--repeats", type=int, default=30, help="latency repeats (median)")


def _run_report_transformer(args) -> int:
    from .. import io as rc_io
    from .metrics import measure_latency, stored_bytes
    from . import transformer as tr

    meta = rc_io.read_metadata(args.model).get("user", {}) if os.path.isfile(args.model) else {}
    source = meta.get("source", "minilm") if meta else args.model
    if meta and not (source == "minilm" or (isinstance(source, str) and os.path.isdir(source))):
        raise RefcompressError(f"MODEL: {args.model!r} was compressed from {source!r}, which is not a model "
                               f"directory here; expected the directory the file was made from")
    reference = tr.load_encoder(source)
    if os.path.isfile(args.model):
        import copy
        compressed = copy.copy(reference)
        compressed.model = rc_io.load(args.model)
        label = os.path.basename(args.model)
    else:
        compressed, label = reference, args.model
    fid = tr.fidelity_lines(reference, compressed)
    batch = reference.tokenizer(list(tr.EVAL_SENTENCES[:32]))
    feed = (batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
    t_ref = measure_latency(reference.model, feed, args.repeats, warmup=1)
    t_cmp = measure_latency(compressed.model, feed, args.repeats, warmup=1)
    rows = [("model", label), ("recipe", meta.get("recipe", "-") if meta else "-"),
            ("bytes", f"{stored_bytes(compressed.model):,} (float: {stored_bytes(reference.model):,})"),
            ("min cos", f"{fid['min_cos']:.4f}"), ("mean cos", f"{fid['mean_cos']:.4f}"),
            ("spearman", f"{fid['spearman']:.4f}"),
            ("latency", f"{t_cmp * 1e3:.1f} ms for 32 sentences (float: {t_ref * 1e3:.1f} ms)")]
    for h, v in rows:
        print(f"{h:<12} {v}")
    return 0


def run_report(args) -> int:
    from .. import io as rc_io
    from ..data import load_digits
    from .compress import HEADERS, measure

    if _is_transformer(args.model) or (os.path.isfile(args.model) and rc_io.read_metadata(args.model).get("user", {}).get("kind") == "bert"):
        return _run_report_transformer(args)
    data = load_digits()
    model = _load_model(args.model, args.seed, data)
    rep = measure(model, data, os.path.basename(args.model), repeats=args.repeats)
    for h, v in zip(HEADERS, rep.row()):
        if "speedup" not in h and h != "ratio":
            print(f"{h:<12} {v}")
    return 0


def add_export_arguments(p):
    p.add_argument("model", metavar="MODEL", help="saved model file (.npz / .safetensors) or reference model name; "
                   "a saved BertModel (what `refcompress compress minilm` writes) too")
    p.add_argument("-o", "--output", required=True, help="where to write the ONNX model (.onnx)")
    p.add_argument("--input-shape", default=None, metavar="DIMS",
                   help="the input's shape after the batch dimension, comma-separated (default 1,8,8: "
                   "the digits images; e.g. 64 for rows of 64 features); the batch stays dynamic.  Not "
                   "for a BertModel, whose graph reads token ids [batch, seq]")
    p.add_argument("--opset", type=int, default=None, help="ONNX opset (default 17, or 21 when "
                   "group-wise weight-only layers need it)")
    p.add_argument("--weight-dtype", choices=("int8", "uint8"), default="int8",
                   help="integer layers' weights as int8 (default; bit-exact in onnxruntime on x86 CPUs "
                   "with VNNI, while its u8 x s8 kernels can saturate on x86 CPUs without VNNI) or "
                   "uint8 = w + 128 with zero point 128 (exact on every CPU; ~1.3x slower in onnxruntime "
                   "on a VNNI CPU; docs/io.md)")
    p.add_argument("--seed", type=int, default=0, help="seed for training a reference model")


def _parse_dims(text: str) -> tuple:
    try:
        dims = tuple(int(d) for d in text.replace(" ", "").split(","))
    except ValueError:
        dims = ()
    if not dims or any(d < 1 for d in dims):
        raise RefcompressError(f"--input-shape: expected positive integers separated by commas "
                               f"(e.g. 1,8,8), got {text!r}")
    return dims


def run_export(args) -> int:
    from .. import io as rc_io
    from ..bert.onnx_export import OPSET as BERT_OPSET
    from ..io.onnx import check_input_shape, check_opset, to_onnx_model, write_model
    from ..nn import BertModel

    # every argument is refused before the model is loaded (or a reference model trained),
    # but for --input-shape and an --opset below 17 with a BertModel: only the loaded model
    # tells that it is one
    dims = _parse_dims("1,8,8" if args.input_shape is None else args.input_shape)
    check_input_shape((None, *dims), "--input-shape")
    opset = None if args.opset is None else check_opset(args.opset, "--opset")
    rc_io.check_output_path(args.output, "--output")
    if os.path.exists(args.model) and (os.path.realpath(args.output) == os.path.realpath(args.model) or (
            os.path.exists(args.output) and os.path.samefile(args.output, args.model))):
        raise RefcompressError(f"--output: {args.output!r} is MODEL itself; writing the ONNX file there "
                               f"would destroy the saved model (expected another path, e.g. a .onnx file)")
    model = _load_model(args.model, args.seed, None)
    bert = isinstance(model, BertModel)
    if bert and args.input_shape is not None:
        raise RefcompressError(f"--input-shape: {args.model!r} holds a BertModel, whose graph reads token ids "
                               f"(input_ids, attention_mask, token_type_ids [batch, seq]); leave the option out")
    if bert and opset is not None and opset < BERT_OPSET:
        raise RefcompressError(f"--opset: a BertModel needs opset >= {BERT_OPSET} (LayerNormalization), got {opset}")
    m = to_onnx_model(model, input_shape=None if bert else (None, *dims), opset=opset,
                      weight_dtype=args.weight_dtype)
    write_model(m, args.output, "--output")
    written = m.opset_import[0].version
    inputs = "input_ids, attention_mask, token_type_ids [batch, seq]" if bert else \
        f"input [batch, {', '.join(map(str, dims))}]"
    print(f"wrote {args.output} (ONNX opset {written}, {inputs})")
    return 0


def add_bench_arguments(p):
    p.add_argument("names", nargs="*", help="benchmarks to run (qgemm, qconv, spmm, lowrank); default all")
    p.add_argument("--full", action="store_true", help="all shapes (default: --quick subsets)")


def run_bench(args) -> int:
    here = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    bench_dir = os.path.join(here, "benchmarks")
    if not os.path.isdir(bench_dir):
        raise RefcompressError(f"bench: the benchmarks/ folder of a source checkout is needed (looked in {bench_dir})")
    names = args.names or sorted(f[6:-3] for f in os.listdir(bench_dir) if f.startswith("bench_") and f.endswith(".py"))
    env = dict(os.environ)
    for var in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE"):  # NumPy at its best BLAS kernel
        env.pop(var, None)
    status = 0
    for name in names:
        script = os.path.join(bench_dir, f"bench_{name}.py")
        if not os.path.exists(script):
            raise RefcompressError(f"bench: no benchmark {name!r} (have {sorted(f[6:-3] for f in os.listdir(bench_dir) if f.startswith('bench_'))})")
        print(f"== {name}", flush=True)
        status |= subprocess.call([sys.executable, script] + ([] if args.full else ["--quick"]), env=env)
    return 1 if status else 0

