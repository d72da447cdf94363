"""The ``cnnc`` command line: check, draw, view, run, bench, tune, sweep, train, eval, export,
import.

Exit status: 0 success, 1 the spec or a data file has errors, 2 the command was used wrongly.
Heavy modules (networkx, numpy, numba) are imported only by the commands that need them.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import warnings

from . import __version__
from .compiler.diagnostics import CnncError, UsageError, format_diagnostics, printable


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """``--help`` shows each option's default, where it has a value worth showing."""

    def _get_help_string(self, action):
        default = action.default
        if default is None or default is False or default == [] or default == argparse.SUPPRESS:
            return action.help  # nothing worth showing (0 is worth showing, though 0 == False)
        return super()._get_help_string(action)


class _Parser(argparse.ArgumentParser):
    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", _HelpFormatter)
        super().__init__(*args, **kwargs)

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
    p.add_argument(
        "--workers",
        type=int,
        metavar="N",
        help="worker processes of the local cluster (default: one per core, at most 4; "
        "never more than the cores)",
    )


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
    p.add_argument(
        "--train",
        action="store_true",
        help="also print the memory a training step needs (activations kept for the backward "
        "pass, gradients, optimizer state, planned peak)",
    )
    p.add_argument(
        "--batch", type=int, default=None, metavar="N", help="batch size with --train (default 1)"
    )
    p.add_argument(
        "--optimizer",
        choices=["sgd", "adam", "adamw"],
        default=None,
        help="optimizer state with --train: sgd's momentum holds one copy of the weights, "
        "adam's moments two (default sgd)",
    )
    p.add_argument(
        "--explain",
        metavar="LAYER",
        help="print the arithmetic behind the rows of the layers named LAYER (a name or a glob "
        "like 'layer1*'): output size, parameters, MACs and receptive field",
    )
    p.add_argument(
        "--layers",
        action="store_true",
        help="print every network's layer table (with several networks, the default is one "
        "summary row each; --network NAME shows one network's layers)",
    )

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

    p = spec_command("view", "write one self-contained HTML page to explore the network")
    p.add_argument("-o", "--output", metavar="OUT.html", help="the page (default: NAME.html)")
    p.add_argument(
        "--bench",
        action="store_true",
        help="also time each layer (as cnnc bench does) and show the times on the page",
    )
    p.add_argument("--batch", type=int, default=1, metavar="N", help="batch size with --bench")
    p.add_argument("--repeat", type=int, default=5, metavar="R", help="timed passes with --bench")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="where --bench runs")

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
    p.add_argument(
        "--batch",
        type=int,
        default=None,
        metavar="N",
        help="batch size (default: the input file's, else 1; a folder run: 8)",
    )
    p.add_argument("--weights", metavar="W.npz", help="weights keyed LAYER.weight, ...")
    p.add_argument("--save-weights", metavar="W.npz", help="save the weights used")
    p.add_argument(
        "--seed", type=_seed, default=0, help="seed for weights and random input (default 0)"
    )
    p.add_argument("--out", metavar="PATH", help="save outputs (.npy, or .npz); a folder run: DIR")
    _device_option(p)
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
    p.add_argument("--batch", type=int, default=1, metavar="N", help="samples per pass")
    p.add_argument(
        "--repeat",
        type=int,
        default=10,
        metavar="R",
        help="timed passes after a warm-up (fewer if --time-limit runs out first)",
    )
    p.add_argument(
        "--time-limit",
        type=float,
        default=BENCH_TIME_LIMIT_S,
        metavar="S",
        help="stop timing after S seconds and report the passes done",
    )
    _device_option(p)
    p.add_argument("--json", action="store_true", help="print JSON instead of the table")
    p.add_argument(
        "--train",
        action="store_true",
        help="time a whole training step (forward, loss, backward, SGD update) with forward "
        "and backward time per layer; convolutions exact (direct) unless --algorithm says",
    )
    _algorithm_option(p)

    p = spec_command("tune", "measure each convolution's fastest algorithm on this machine")
    p.add_argument(
        "--batch",
        type=int,
        default=1,
        metavar="N",
        help="batch size to measure at (choices are cached per layer shape and batch)",
    )
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
    p.add_argument(
        "--batch", type=int, metavar="N", help="batch size when timing (1) or training (32)"
    )
    p.add_argument("--repeat", type=int, default=5, metavar="R", help="timed passes per variant")
    _device_option(p, "where --bench times the variants")
    form = p.add_mutually_exclusive_group()
    form.add_argument("--json", action="store_true", help="print a JSON list of rows")
    form.add_argument("--csv", action="store_true", help="print CSV")
    p.add_argument(
        "--plot",
        metavar="FILE.svg",
        help="plot MACs against params (and ms); with --train, accuracy against MACs",
    )
    p.add_argument(
        "--train",
        action="store_true",
        help="also train each variant (with the flags of cnnc train) and report its accuracy",
    )
    p.add_argument("--data", metavar="TRAIN", help="with --train: the training data")
    add_train_options(p, batch=False)
    add_cluster_options(p)

    p = spec_command("train", "train the network on data (an .npz, an image folder, digits)")
    p.add_argument(
        "--data",
        metavar="TRAIN",
        help="training data: an .npz with x and y, a folder of class folders of images, or "
        "digits (scikit-learn's 8x8 digits)",
    )
    add_train_options(p)
    p.add_argument("--weights", metavar="INIT.npz", help="start from these weights")
    p.add_argument(
        "--partial",
        action="store_true",
        help="with --weights: load the keys whose name and shape match, initialise the rest",
    )
    p.add_argument("--out", metavar="W.npz", help="the trained weights (default: NETWORK.npz)")
    p.add_argument(
        "--checkpoint", metavar="DIR", help="save a checkpoint after every epoch into DIR"
    )
    p.add_argument(
        "--resume", metavar="DIR", help="continue from the checkpoint in DIR (flags override)"
    )
    _device_option(p, "where to train")
    p.add_argument("--log", metavar="F.csv", help="append one CSV row per epoch")
    p.add_argument("--plot", metavar="F.svg", help="draw loss and accuracy curves (.svg, .png)")
    p.add_argument(
        "--json", action="store_true", help="print the history as JSON at the end (lines: stderr)"
    )
    p.add_argument(
        "--scheduler",
        metavar="ADDRESS",
        help="train on a worker of this Dask cluster (tcp://HOST:PORT); default: in this process",
    )
    p.set_defaults(workers=None)

    p = spec_command("eval", "loss, accuracy and confusion matrix of trained weights on data")
    p.add_argument("--weights", metavar="W.npz", required=True, help="the trained weights")
    p.add_argument(
        "--data", metavar="DATA", required=True, help="an .npz, an image folder, or digits"
    )
    p.add_argument("--loss", choices=LOSSES, default="cross_entropy", help="the loss to report")
    p.add_argument("--batch", type=int, default=32, metavar="N", help="samples per pass")
    _device_option(p, "where to evaluate")
    p.add_argument("--json", action="store_true", help="print JSON instead of the report")

    p = spec_command("export", "write the network as an ONNX model (needs the onnx extra)")
    p.add_argument("-o", "--output", metavar="OUT.onnx", required=True, help="the ONNX file")
    p.add_argument("--weights", metavar="W.npz", help="weights keyed LAYER.weight, ...")
    p.add_argument(
        "--seed", type=_seed, default=0, help="seed for the weights without --weights (default 0)"
    )
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


def _seed(text: str) -> int:
    """A seed for NumPy's generator, which takes non-negative integers only."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be a non-negative integer, got '{text}'")
    return value


#: ``cnnc bench`` stops timing after this many seconds (``--time-limit``).
BENCH_TIME_LIMIT_S = 60.0


def _device_option(p, what="where to run"):
    p.add_argument(
        "--device",
        choices=["cpu", "cuda"],
        default="cpu",
        help=f"{what}: the CPU (Numba kernels) or an NVIDIA GPU (needs the cuda extra)",
    )


LOSSES = ("cross_entropy", "mse", "cosine")


def add_train_options(p, batch: bool = True):
    """The settings of a training run (``cnnc train``, ``cnnc sweep --train``). Defaults are
    None here: a resumed run keeps its checkpoint's settings unless a flag is given."""
    p.add_argument("--val", metavar="VAL", help="validation data (as --data)")
    p.add_argument(
        "--val-split", type=float, metavar="F", help="validate on a seeded share F of --data"
    )
    p.add_argument("--epochs", type=int, metavar="E", help="epochs in all (default 10)")
    if batch:
        p.add_argument("--batch", type=int, metavar="N", help="batch size (default 32)")
    p.add_argument("--loss", choices=LOSSES, help="default cross_entropy")
    p.add_argument("--optimizer", choices=["sgd", "adam", "adamw"], help="default sgd")
    p.add_argument(
        "--lr", type=float, metavar="LR", help="learning rate (default: sgd 0.01, adam 0.001)"
    )
    p.add_argument("--momentum", type=float, metavar="M", help="SGD's momentum (default 0)")
    p.add_argument("--nesterov", action="store_const", const=True, help="Nesterov momentum (SGD)")
    p.add_argument(
        "--weight-decay",
        type=float,
        metavar="WD",
        help="L2 decay (AdamW: decoupled; default 0, AdamW 0.01)",
    )
    p.add_argument(
        "--schedule",
        metavar="S",
        help="constant (default), step:E:G (times G every E epochs) or cosine",
    )
    p.add_argument("--warmup", type=int, metavar="E", help="epochs of linear warm-up")
    p.add_argument("--augment", metavar="A", help="flip and/or crop=P, e.g. flip,crop=4")
    p.add_argument(
        "--freeze",
        metavar="PATTERN",
        action="append",
        help="keep the layers matching this glob as they are (repeatable)",
    )
    p.add_argument("--seed", type=_seed, help="seed of weights, shuffling, augmentation, dropout")


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
    from .compiler.report import summary_table
    from .compiler.source import SourceFile

    if not args.train and (args.batch is not None or args.optimizer is not None):
        raise UsageError("--batch and --optimizer go with --train: cnnc check FILE --train ...")
    program = Program.load(SourceFile.from_path(args.file))
    result = program.check(args.network, args.strict, parse_settings(args.params))
    training = [None] * len(result.networks)
    if args.train:
        from .runtime.cli import training_memory

        batch = 1 if args.batch is None else args.batch
        training = training_memory(result.networks, batch, args.optimizer or "sgd")
    explained = _explained(result, args.explain)
    if args.json:
        data = result.to_json()
        if args.train:
            for entry, estimate in zip(data["networks"], training):
                entry["training"] = estimate
        if explained is not None:
            from .compiler.explain import explain_json

            by_name = {net.name: layers for net, layers in explained}
            for net in data["networks"]:
                net["explain"] = [explain_json(x) for x in by_name.get(net["name"], [])]
        print(json.dumps(data, indent=2))
    elif explained is not None:
        from .compiler.explain import explain_text

        print("\n\n".join(explain_text(net, x) for net, layers in explained for x in layers))
    else:
        nets = result.networks
        if len(nets) == 1 or args.layers:
            print("\n\n".join(_with_training(n, t) for n, t in zip(nets, training)))
        if len(nets) > 1:
            if args.layers:
                print()
            print(summary_table(nets))
            if not args.layers:
                print(
                    f"{len(nets)} networks; one network's layers: cnnc check "
                    f"{shlex.quote(printable(args.file))} --network NAME (all of them: --layers)"
                )
    if not args.json and result.diagnostics:
        print(format_diagnostics(result.diagnostics), file=sys.stderr)
    if not args.json:
        if not result.networks and not result.diagnostics:
            print(f"{args.file}: no networks defined", file=sys.stderr)
    return 0 if result.ok else 1


def _with_training(net, estimate) -> str:
    from .compiler.report import network_table

    if estimate is None:
        return network_table(net)
    from .runtime.cli import training_memory_text

    return network_table(net) + "\n" + training_memory_text(estimate)


def _explained(result, pattern):
    """The layers ``--explain`` names, by network (None without the option). A spec with
    errors may lack the layer because its network failed: then the errors say why."""
    if pattern is None:
        return None
    from .compiler.explain import matching, select

    if not result.ok and not any(matching(net, pattern) for net in result.networks):
        return []
    return select(result.networks, pattern)


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


def cmd_view(args) -> int:
    from .compiler.view import write

    net = _load(args)
    out = args.output or f"{net.name}.html"
    timings = None
    if args.bench:
        from .runtime.cli import layer_times

        timings = layer_times(net, args.batch, args.repeat, args.device)
    write(net, out, timings)
    print(f"wrote {out}")
    return 0


def cmd_run(args) -> int:
    from . import network_of, parse_program
    from .jobs import folder
    from .runtime.cli import run_command

    args.program = parse_program(args.file)
    args.params_used = parse_settings(args.params)
    net = network_of(args.program, args.network, params=args.params_used)
    if args.batch is not None and args.batch < 1:
        raise UsageError(f"--batch must be at least 1, got {args.batch}")
    folder.check_folders_exist(args.input)
    if folder.is_many(args.input):
        return folder.run_command(net, args)
    return run_command(net, args)


def cmd_bench(args) -> int:
    from .runtime.cli import bench_command, train_bench_command

    return (train_bench_command if args.train else bench_command)(_load(args), args)


def cmd_sweep(args) -> int:
    from . import parse_program
    from .jobs.sweep import sweep_command

    args.program = parse_program(args.file)
    args.params_used = parse_settings(args.params)
    return sweep_command(args)


def cmd_tune(args) -> int:
    from .runtime.cli import tune_command

    return tune_command(_load(args), args)


def cmd_train(args) -> int:
    from .training.cli import train_command

    if args.scheduler:
        from .jobs.train import train_on_cluster

        return train_on_cluster(args, parse_settings(args.params))
    return train_command(_load(args), args)


def cmd_eval(args) -> int:
    from .training.cli import eval_command

    return eval_command(_load(args), args)


def cmd_export(args) -> int:
    from .interchange.cli import export_command

    return export_command(args, _load)


def cmd_import(args) -> int:
    from .interchange.cli import import_command

    return import_command(args)


COMMANDS = {
    "check": cmd_check,
    "draw": cmd_draw,
    "view": cmd_view,
    "run": cmd_run,
    "bench": cmd_bench,
    "tune": cmd_tune,
    "sweep": cmd_sweep,
    "train": cmd_train,
    "eval": cmd_eval,
    "export": cmd_export,
    "import": cmd_import,
}


def _show_warning(message, category, filename, lineno, file=None, line=None):
    """Warnings (cnnc's own, or NumPy's numerical ones) as one plain line, no source."""
    print(f"cnnc: warning: {message}", file=sys.stderr)


def main(argv=None) -> int:
    """Run one command; its exit status. From the command line (``argv`` None: the ``cnnc``
    script, ``python -m cnnc``) the process ends here once the command is done
    (``_exit_now``); called with a list of arguments, it returns."""
    args = build_parser().parse_args(argv)
    with warnings.catch_warnings():
        warnings.showwarning = _show_warning
        code = _dispatch(args)
    if argv is None:
        _exit_now(code)
    return code


def _exit_now(code: int) -> None:
    """End the process without Python's teardown of its objects, once a command that loaded
    Numba is done: the teardown of Numba's typing and lowering registries took 0.13-0.25 s
    after every such command (`cnnc run` of ResNet-18: its last line came 0.25 s before the
    process ended, 0.01 s with this; 2-core Zen 4, shared). Exit handlers still run and
    the output is flushed first. Where nothing of Numba's was loaded, or a thread or child
    process of the command still runs (Python's exit waits for them), the process exits as
    usual."""
    import atexit
    import threading

    run_exit_handlers = getattr(atexit, "_run_exitfuncs", None)
    children = sys.modules.get("multiprocessing")
    if (
        "numba.core.registry" not in sys.modules
        or run_exit_handlers is None
        or threading.active_count() > 1
        or (children is not None and children.active_children())
    ):
        return
    run_exit_handlers()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe or stream: nothing more to say
            pass
    os._exit(code if isinstance(code, int) else 1)


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
