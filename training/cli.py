"""``cnnc train`` and ``cnnc eval``: flags in, a prepared run, lines and files out."""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path

from ..compiler import UsageError, error
from ..runtime import weights as weights_io
from ..runtime.data import check_output_path
from .loop import Interrupted, Run, Settings, evaluate
from .report import CsvLog, check_plot_path, epoch_line, metrics_text, plot_history, progress_bar


def given_settings(args) -> dict:
    """The settings the command line gave; the rest come from the defaults or a checkpoint."""
    given = {}
    for name in Settings.names():
        value = getattr(args, name, None)
        if value is not None and value != []:
            given[name] = value
    return given


def train_command(net, args) -> int:
    """Prepare everything that can fail first (data, weights, output paths, checkpoint
    folder), then train; the weights are written once training has finished."""
    if args.partial and not args.weights:
        raise UsageError(error("--partial goes with --weights INIT.npz"))
    out = Path(args.out or f"{net.name}.npz")
    reads = [args.weights, args.data, args.val]
    check_output_path(out, "--out", (".npz",), avoid=reads)
    log = CsvLog(args.log) if args.log else None
    plot = check_plot_path(args.plot) if args.plot else None
    run = Run(
        net,
        given_settings(args),
        weights=args.weights,
        partial=args.partial,
        checkpoint=args.checkpoint,
        resume=args.resume,
        device=args.device,
    )
    stream = sys.stderr if args.json else sys.stdout
    for note in run.notes:
        print(f"cnnc: {note}", file=sys.stderr, flush=True)
    s = run.settings
    val = f", validating on {len(run.val_data)}" if run.val_data is not None else ""
    frozen = f", {len(run.frozen)} layers frozen" if run.frozen else ""
    print(
        f"training {net.name} on {run.train_data.name}: {len(run.train_data)} samples{val}; "
        f"{s.epochs} epochs of batch {s.batch}, {s.optimizer} lr {s.learning_rate:g}, "
        f"{s.schedule} schedule{frozen}",
        file=stream,
        flush=True,
    )

    def on_epoch(entry):
        print(epoch_line(entry, s.epochs), file=stream, flush=True)
        if log is not None:
            log.append(entry)

    try:
        history, weights = run.fit(on_epoch, progress_bar(s.epochs))
    except Interrupted as stop:
        print(_interrupted(stop, args), file=sys.stderr, flush=True)
        return 130
    weights_io.save(weights, out)
    if plot is not None:
        plot_history(history, plot, f"{net.name} trained on {run.train_data.name}")
    if args.json:
        print(json.dumps({"history": history, "weights": str(out)}, indent=2))
    else:
        last = history[-1] if history else None
        if last is not None and last["val_accuracy"] is not None:
            print(f"validation accuracy {100 * last['val_accuracy']:.2f}%", flush=True)
    print(f"wrote weights to {out}", file=sys.stderr if args.json else sys.stdout)
    if plot is not None:
        print(f"wrote {plot}", file=sys.stderr)
    return 0


def _interrupted(stop: Interrupted, args) -> str:
    where = f"cnnc: interrupted during epoch {stop.epochs + 1}"
    if stop.checkpoint is None:
        return f"{where}; nothing was saved (train with --checkpoint DIR to be able to resume)"
    command = ["cnnc", "train", args.file]
    if args.network:
        command += ["--network", args.network]
    for setting in args.params:
        command += ["--set", setting]
    command += ["--resume", str(stop.checkpoint)]
    if args.out:
        command += ["--out", args.out]
    return (
        f"{where}; the checkpoint of epoch {stop.epochs} is in {stop.checkpoint}\n"
        f"  resume with: {shlex.join(command)}"
    )


def eval_command(net, args) -> int:
    if args.batch < 1:
        raise UsageError(error(f"--batch must be at least 1, got {args.batch}"))
    result = evaluate(net, args.weights, args.data, args.loss, args.batch, args.device)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"network {net.name} on {result['data']}")
    print(metrics_text(result))
    return 0
