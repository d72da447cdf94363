"""Training on Dask: ``cnnc train --scheduler ADDRESS`` (the whole run as one task on a
worker, its epoch lines streamed back) and the training of one variant of ``cnnc sweep
--train``.

A worker rebuilds the network from the parsed program, reads the data and writes the
checkpoints and weights itself: as for folder runs, those paths must be on storage every
worker sees.
"""

from __future__ import annotations

import sys
import time
import uuid
from pathlib import Path

from ..compiler import DataError, UsageError, error


def train_variant(net, settings: dict, device: str = "cpu") -> dict:
    """Train one sweep variant; the row's ``val_loss``, ``val_accuracy``, ``train_s`` (the
    last epoch's validation; the training figures where there is no validation data)."""
    from ..training.loop import Run

    t0 = time.perf_counter()
    history, _ = Run(net, dict(settings), device=device).fit()
    last = history[-1]
    return {
        "val_loss": last["val_loss"] if last["val_loss"] is not None else last["loss"],
        "val_accuracy": last["val_accuracy"] if last["val_loss"] is not None else last["accuracy"],
        "train_s": time.perf_counter() - t0,
    }


def _absolute(path: str | None) -> str | None:
    """A path as a worker should read it (``digits`` is a name, not a path)."""
    if path is None or path == "digits":
        return path
    return str(Path(path).resolve())


def train_task(program, network: str, params: dict, given: dict, options: dict, topic: str):
    """Run on a worker: the whole training run, each epoch's entry published on ``topic``."""
    from distributed import get_worker

    from ..runtime import weights as weights_io
    from ..training.loop import Run

    result = program.check(network, False, params)
    if not result.ok:
        raise DataError(result.diagnostics)
    net = result.networks[0]
    worker = get_worker()
    run = Run(
        net,
        given,
        weights=options["weights"],
        partial=options["partial"],
        checkpoint=options["checkpoint"],
        resume=options["resume"],
        device=options["device"],
    )
    for note in run.notes:
        worker.log_event(topic, {"note": note})
    history, weights = run.fit(lambda entry: worker.log_event(topic, {"epoch": entry}))
    weights_io.save(weights, Path(options["out"]))
    return history


def train_on_cluster(args, params: dict) -> int:
    """``cnnc train --scheduler ADDRESS``: the run goes to one worker; lines come back."""
    import json

    from .. import parse_program
    from ..runtime.data import check_output_path
    from ..training.cli import given_settings
    from ..training.loop import Settings
    from ..training.report import epoch_line
    from . import cluster
    from .sweep import network_name

    program = parse_program(args.file)
    network = network_name(program, args.network)
    program.check_param_names([program.networks[network]], params)
    if args.plot or args.log:
        raise UsageError(error("--plot and --log are written by local runs; drop --scheduler"))
    given = given_settings(args)
    for key in ("data", "val"):
        if key in given:
            given[key] = _absolute(given[key])
    out = Path(args.out or f"{network}.npz").resolve()
    check_output_path(out, "--out", (".npz",))
    options = {
        "weights": _absolute(args.weights),
        "partial": args.partial,
        "checkpoint": _absolute(args.checkpoint),
        "resume": _absolute(args.resume),
        "device": args.device,
        "out": str(out),
    }
    epochs = given.get("epochs", Settings.epochs)
    stream = sys.stderr if args.json else sys.stdout
    topic = f"cnnc-train-{uuid.uuid4().hex}"

    shown: set[int] = set()

    def show(event):
        _, message = event
        if "note" in message:
            print(f"cnnc: {message['note']}", file=sys.stderr, flush=True)
        elif message["epoch"]["epoch"] not in shown:
            shown.add(message["epoch"]["epoch"])
            print(epoch_line(message["epoch"], epochs), file=stream, flush=True)

    with cluster.client(args.scheduler, args.workers, "cnnc train --scheduler") as client:
        client.subscribe_topic(topic, show)
        future = client.submit(
            train_task, program, network, params, given, options, topic, pure=False
        )
        try:
            history = future.result()
        except KeyboardInterrupt:
            future.cancel()
            where = f"; resume with --resume {args.checkpoint}" if args.checkpoint else ""
            print(
                f"cnnc: interrupted; the run on the cluster was cancelled{where}", file=sys.stderr
            )
            return 130
        for entry in history:  # events may trail the result: show what has not come
            show((None, {"epoch": entry}))
    if args.json:
        print(json.dumps({"history": history, "weights": str(out)}, indent=2))
    print(f"wrote weights to {out}", file=stream)
    return 0
