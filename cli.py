"""The ``cnnc`` command line: check, draw, run, bench, tune, sweep, export, import.

Exit status: 0 success, 1 the spec or a data file has errors, 2 the command was used wrongly.
Heavy modules (networkx, numpy, numba) are imported only by the commands that need them.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings

from . import __version__
from .compiler.diagnostics import CnncError, UsageError


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        self.print_usage(sys.stderr)
        print(f"cnnc: error: {message}", file=sys.stderr)
        raise SystemExit(2)


def add_cluster_options(p):
    p.add_argument(
        "--scheduler",
        metavar="ADDRESS",
        help="an existing Dask scheduler (tcp://HOST:PORT); default: a local cluster",
    )
    p.add_argument("--workers", type=int, metavar="N", help="worker processes of the local cluster")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="cnnc", description="Check, cost, draw and run .cnn network specs.")
    parser.add_argument("--version", action="version", version=f"cnnc {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    def spec_command(name, help_text):
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument("file", metavar="FILE", help="a .cnn spec")
        p.add_argument("--network", metavar="NAME", help="which network of the file")
        p.add_argument(
            "--set",
            metavar="NAME=VALUE",
            action="append",
            default=[],
            dest="params",
            help="set a network parameter (repeatable): --set width=32",
        )
        return p

    p = spec_command("check", "shape-check a spec and print layers, params and MACs")
    p.add_argument(
        "--strict", action="store_true", help="also reject strides that do not tile their input"
    )
    p.add_argument("--json", action="store_true", help="print JSON instead of tables")

    p = spec_command("draw", "render the network with Graphviz")
    p.add_argument(
        "-o",
        "--output",
        metavar="OUT",
        help="output file; the format follows its suffix: .svg .png .pdf .dot",
    )
    p.add_argument(
        "--collapse", action="store_true", help="draw each top-level block instance as one node"
    )
    p.add_argument("--rankdir", choices=["TB", "LR"], default="TB", help="layout direction")

    p = spec_command("run", "execute the network")
    p.add_argument(
        "--input",
        metavar="[NAME=]PATH",
        action="extend",
        nargs="+",
        default=[],
        help="input data: .npy (N,C,H,W) or (C,H,W), or .png/.jpg; NAME=PATH per input "
        "(several after one --input, or one --input each)",
    )
    p.add_argument("--batch", type=int, default=None, metavar="N", help="batch size")
    p.add_argument("--weights", metavar="W.npz", help="weights keyed LAYER.weight, ...")
    p.add_argument("--save-weights", metavar="W.npz", help="save the weights used")
    p.add_argument("--seed", type=int, default=0, help="seed for weights and random input")
    p.add_argument("--out", metavar="PATH", help="save outputs (.npy, or .npz); a folder run: DIR")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument(
        "--normalize", choices=["imagenet"], help="normalise image inputs with ImageNet's mean/std"
    )
    add_cluster_options(p)
    _algorithm_option(p)
    p.add_argument(
        "--tune",
        action="store_true",
        default=None,
        help="measure the fastest algorithm of each convolution that this machine has no "
        "cached choice for (seconds, once per layer shape; also CNNC_TUNE=1). Without it a "
        "run measures nothing: it uses the choices cached by `cnnc tune` or `cnnc bench`, "
        "else the default (see --algorithm)",
    )

    p = spec_command("bench", "time the forward pass layer by layer")
    p.add_argument("--batch", type=int, default=1, metavar="N")
    p.add_argument("--repeat", type=int, default=10, metavar="R")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--json", action="store_true")
    _algorithm_option(p)

    p = spec_command("tune", "measure each convolution's fastest algorithm on this machine")
    p.add_argument("--batch", type=int, default=1, metavar="N")
    p.add_argument("--force", action="store_true", help="measure again what is cached")

    p = spec_command("sweep", "check (and time) every combination of network parameters, on Dask")
    p.add_argument(
        "--grid",
        metavar="NAME=V1,V2",
        action="extend",
        nargs="+",
        required=True,
        help="values of a network parameter: --grid width=16,32,64 depth=1,2",
    )
    p.add_argument("--bench", action="store_true", help="also time each variant")
    p.add_argument("--batch", type=int, default=1, metavar="N", help="batch size when timing")
    p.add_argument("--repeat", type=int, default=5, metavar="R", help="timed passes per variant")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    form = p.add_mutually_exclusive_group()
    form.add_argument("--json", action="store_true", help="print a JSON list of rows")
    form.add_argument("--csv", action="store_true", help="print CSV")
    p.add_argument("--plot", metavar="FILE.svg", help="plot MACs against params (and ms)")
    add_cluster_options(p)

    p = spec_command("export", "write the network as an ONNX model (needs the onnx extra)")
    p.add_argument("-o", "--output", metavar="OUT.onnx", required=True, help="the ONNX file")
    p.add_argument("--weights", metavar="W.npz", help="weights keyed LAYER.weight, ...")
    p.add_argument("--seed", type=int, default=0, help="seed for the weights without --weights")
    p.add_argument("--opset", type=int, default=17, metavar="N", help="ONNX opset (17 to 21)")

    p = sub.add_parser(
        "import",
        help="translate an ONNX model into a .cnn spec and weights (needs the onnx extra)",
        description="translate an ONNX model into a .cnn spec and weights",
    )
    p.add_argument("model", metavar="MODEL.onnx", help="an ONNX model (opsets 7 to 22)")
    p.add_argument("-o", "--output", metavar="OUT.cnn", help="the spec (default: print it)")
    p.add_argument("--weights-out", metavar="W.npz", help="write the weights here")
    p.add_argument("--name", metavar="NAME", help="the network's name (default: the file's)")
    p.add_argument(
        "--blocks",
        action="store_true",
        help="write repeated structures (residual units) as blocks called once each",
    )
    return parser


def _algorithm_option(p):
    from .runtime.backends import ALGORITHMS

    p.add_argument(
        "--algorithm",
        choices=list(ALGORITHMS),
        default=None,
        help="CPU convolutions (default: auto, or CNNC_ALGORITHM): "
        + "; ".join(f"{name}: {what}" for name, what in ALGORITHMS.items()),
    )


def cmd_check(args) -> int:
    from .compiler.program import Program
    from .compiler.report import network_table, summary_table
    from .compiler.source import SourceFile

    program = Program.load(SourceFile.from_path(args.file))
    result = program.check(args.network, args.strict, parse_settings(args.params))
    if args.json:
        print(json.dumps(result.to_json(), indent=2))
    else:
        if result.networks:
            print("\n\n".join(network_table(n) for n in result.networks))
        if len(result.networks) > 1:
            print()
            print(summary_table(result.networks))
        for d in result.diagnostics:
            print(d.format(), file=sys.stderr)
        if not result.networks and not result.diagnostics:
            print(f"{args.file}: no networks defined", file=sys.stderr)
    return 0 if result.ok else 1


def parse_settings(settings: list[str]) -> dict[str, str]:
    """``--set NAME=VALUE`` options as a dict; the elaborator checks names and types."""
    params: dict[str, str] = {}
    for setting in settings:
        name, sep, value = setting.partition("=")
        name = name.strip()
        if not sep or not name.isidentifier() or not value.strip():
            raise UsageError(f"--set '{setting}': write NAME=VALUE, e.g. --set width=32")
        if name in params:
            raise UsageError(f"--set {name} given twice")
        params[name] = value
    return params


def _load(args):
    from . import load

    return load(args.file, args.network, params=parse_settings(args.params))


def cmd_draw(args) -> int:
    from .compiler.draw import render

    net = _load(args)
    out = args.output or f"{net.name}.svg"
    render(net, out, collapse=args.collapse, rankdir=args.rankdir)
    print(f"wrote {out}")
    return 0


def cmd_run(args) -> int:
    from . import network_of, parse_program
    from .runtime.cli import run_command

    args.program = parse_program(args.file)
    args.params_used = parse_settings(args.params)
    return run_command(network_of(args.program, args.network, params=args.params_used), args)


def cmd_bench(args) -> int:
    from .runtime.cli import bench_command

    return bench_command(_load(args), args)


def cmd_sweep(args) -> int:
    from . import parse_program
    from .runtime.sweep import sweep_command

    args.program = parse_program(args.file)
    args.params_used = parse_settings(args.params)
    return sweep_command(args)


def cmd_tune(args) -> int:
    from .runtime.cli import tune_command

    return tune_command(_load(args), args)


def cmd_export(args) -> int:
    from .interchange.cli import export_command

    return export_command(args, _load)


def cmd_import(args) -> int:
    from .interchange.cli import import_command

    return import_command(args)


COMMANDS = {
    "check": cmd_check,
    "draw": cmd_draw,
    "run": cmd_run,
    "bench": cmd_bench,
    "tune": cmd_tune,
    "sweep": cmd_sweep,
    "export": cmd_export,
    "import": cmd_import,
}


def _show_warning(message, category, filename, lineno, file=None, line=None):
    """Warnings (cnnc's own, or NumPy's numerical ones) as one plain line, no source."""
    print(f"cnnc: warning: {message}", file=sys.stderr)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    with warnings.catch_warnings():
        warnings.showwarning = _show_warning
        return _dispatch(args)


def _dispatch(args) -> int:
    try:
        return COMMANDS[args.command](args)
    except UsageError as exc:
        print(exc.format(), file=sys.stderr)
        return 2
    except CnncError as exc:
        print(exc.format(), file=sys.stderr)
        return 1
    except MemoryError:
        print(
            "cnnc: error: out of memory; try a smaller --batch or a smaller network",
            file=sys.stderr,
        )
        return 1
    except KeyboardInterrupt:
        print("cnnc: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
    except Exception as exc:  # a bug in cnnc: say so plainly, never dump a traceback
        if os.environ.get("CNNC_DEBUG"):
            raise
        print(
            f"cnnc: internal error: {type(exc).__name__}: {exc}\n"
            "  this is a bug in cnnc; rerun with CNNC_DEBUG=1 for details and report it",
            file=sys.stderr,
        )
        return 1
