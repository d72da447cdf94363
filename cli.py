"""The ``cnnc`` command line: check, draw, run, bench, export, import.

Exit status: 0 success, 1 the spec or a data file has errors, 2 the command was used wrongly.
Heavy modules (networkx, numpy, numba) are imported only by the commands that need them.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from . import __version__
from .compiler.diagnostics import CnncError, UsageError


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        self.print_usage(sys.stderr)
        print(f"cnnc: error: {message}", file=sys.stderr)
        raise SystemExit(2)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="cnnc", description="Check, cost, draw and run .cnn network specs.")
    parser.add_argument("--version", action="version", version=f"cnnc {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    def spec_command(name, help_text):
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument("file", metavar="FILE", help="a .cnn spec")
        p.add_argument("--network", metavar="NAME", help="which network of the file")
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
    p.add_argument("--out", metavar="PATH", help="save outputs (.npy, or .npz)")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")

    p = spec_command("bench", "time the forward pass layer by layer")
    p.add_argument("--batch", type=int, default=1, metavar="N")
    p.add_argument("--repeat", type=int, default=10, metavar="R")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--json", action="store_true")

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
    return parser


def cmd_check(args) -> int:
    from .compiler.program import Program
    from .compiler.report import network_table, summary_table
    from .compiler.source import SourceFile

    program = Program.load(SourceFile.from_path(args.file))
    result = program.check(args.network, args.strict)
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


def _load(args):
    from . import load

    return load(args.file, args.network)


def cmd_draw(args) -> int:
    from .compiler.draw import render

    net = _load(args)
    out = args.output or f"{net.name}.svg"
    render(net, out, collapse=args.collapse, rankdir=args.rankdir)
    print(f"wrote {out}")
    return 0


def cmd_run(args) -> int:
    from .runtime.cli import run_command

    return run_command(_load(args), args)


def cmd_bench(args) -> int:
    from .runtime.cli import bench_command

    return bench_command(_load(args), args)


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
    "export": cmd_export,
    "import": cmd_import,
}


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
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
