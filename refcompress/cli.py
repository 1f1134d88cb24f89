"""Command line: ``refcompress <command>`` (also ``python -m refcompress``).

Commands
  info      what was built (C extension, OpenMP, ISA variants) and what this CPU runs
  demo      the main job on the embedded digits data set
  compress  run a recipe on a model and write the compressed model
  report    parameters, bytes, MACs, accuracy and latency of a model
  export    write a model as ONNX: a chain of layers or a (compressed) BertModel, integer
            and W8A8 layers as exact integer ops
  bench     the kernel benchmarks (from a source checkout)
Exit codes: 0 success, 1 failure (an error message names the cause), 2 bad usage.
"""

from __future__ import annotations

import argparse
import json
import sys

from .errors import RefcompressError


def _cmd_info(args) -> int:
    from . import __version__, kernels

    info = kernels.available()
    if args.json:
        print(json.dumps(info, indent=2, default=list))
        return 0
    print(f"refcompress {__version__}")
    if info["c_built"]:
        print("C extension     : built" + (" (AddressSanitizer + UBSan)" if info["sanitized"] else ""))
    else:
        print(f"C extension     : NOT built ({info['c_error']}); running the NumPy reference")
    print(f"OpenMP          : {'yes' if info['openmp'] else 'no'}, threads = {info['threads']}")
    print(f"compiled ISAs   : {', '.join(info['compiled_isas']) or '-'}")
    print(f"CPU runs        : {', '.join(info['cpu_isas']) or '-'}")
    print(f"backend setting : {info['backend']}" + (f" (isa {info['isa']})" if info["isa"] else ""))
    print()
    print(f"{'op':<14} {'variants here':<32} {'selected':<12} exactness")
    for name, op in info["ops"].items():
        print(f"{name:<14} {', '.join(op['runnable']) or '-':<32} {op['selected'] or 'numpy':<12} {op['exactness']}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="refcompress",
        description="Model compression you can read and trust: pruning, quantization, "
        "distillation and low-rank decomposition in NumPy with exact C kernels.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    p = sub.add_parser("info", help="show the C build, ISA variants and kernel backends")
    p.add_argument("--json", action="store_true", help="print the facts as JSON")
    p.set_defaults(func=_cmd_info)

    from .pipeline import cli_commands, demo

    p = sub.add_parser("demo", help="train and report the reference models on digits (the main job)")
    demo.add_arguments(p)
    p.set_defaults(func=demo.run_from_args)

    p = sub.add_parser("compress", help="run a compression recipe and write the compressed model")
    cli_commands.add_compress_arguments(p)
    p.set_defaults(func=cli_commands.run_compress)

    p = sub.add_parser("report", help="measure a saved (or reference) model on digits")
    cli_commands.add_report_arguments(p)
    p.set_defaults(func=cli_commands.run_report)

    p = sub.add_parser("export", help="write a saved (or reference) model, or a saved BertModel, as an ONNX file")
    cli_commands.add_export_arguments(p)
    p.set_defaults(func=cli_commands.run_export)

    p = sub.add_parser("bench", help="run the kernel benchmarks (quick subsets unless --full)")
    cli_commands.add_bench_arguments(p)
    p.set_defaults(func=cli_commands.run_bench)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (RefcompressError, OSError, ImportError) as exc:
        # Expected failures (bad input, a damaged or unreadable file, a missing optional
        # package) are one line naming the cause; anything else is a bug and keeps its traceback.
        print(f"refcompress {args.command}: {exc}", file=sys.stderr)
        return 1
    except MemoryError as exc:
        print(f"refcompress {args.command}: out of memory ({exc})", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
