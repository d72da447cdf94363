"""``cnnc run`` and ``cnnc bench``: argument handling and printing around runtime.session."""

from __future__ import annotations

import json
import sys
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from ..compiler import DataError, Network, UsageError, error, fmt_shape, table
from ..compiler.report import nbytes
from . import data, memory
from . import weights as weights_io
from .session import Session


@contextmanager
def telling_what_happens(session: Session, batch: int):
    """Lines on stderr for the waits of a first pass: kernels compiled (once per machine and
    cnnc version, then loaded from the cache) and convolution algorithms measured (once per
    layer shape, with a line per layer)."""
    from .compiling import announce_compiling
    from .tune import ProgressBar

    compiling = (
        "cnnc: compiling the CPU kernels this network needs (first run on this machine; "
        "later runs load them from the cache)..."
        if session.device == "cpu"
        else f"cnnc: compiling the {session.device.upper()} kernels this network needs..."
    )
    backend = session._executor(batch).backend if session.device == "cpu" else None
    pending = backend.pending_tuning(session.plan, batch) if backend and backend.tune else ()
    bar = None
    if pending:
        print(
            f"cnnc: measuring the fastest algorithm for {len(pending)} convolution shape"
            f"{'s' if len(pending) != 1 else ''} on this machine (once; `cnnc tune FILE` does "
            "it ahead of time)",
            file=sys.stderr,
            flush=True,
        )
        bar = ProgressBar(len(pending))
        backend.on_tune = bar.step
    try:
        with announce_compiling(compiling):
            yield
    finally:
        if bar is not None:
            bar.close()
            backend.on_tune = None


def run_command(net: Network, args) -> int:
    """One run of the inputs named (a folder or glob goes to jobs.folder first)."""
    if args.scheduler:
        raise UsageError(
            error("--scheduler runs a folder or glob of inputs: --input DIR --out DIR")
        )
    paths = data.parse_input_args(net, args.input)
    for path in paths.values():  # a missing input is the first thing to say, before --out
        data.check_regular_file(path, "input")
    reads = [args.weights, *paths.values()]
    if args.out:
        data.check_output_path(Path(args.out), "--out", avoid=reads)
    if args.save_weights:
        data.check_output_path(
            Path(args.save_weights), "--save-weights", (".npz",), avoid=[*reads, args.out]
        )
    if paths:
        inputs = {
            name: data.load_input(path, name, net.inputs[name].shape, args.normalize)
            for name, path in paths.items()
        }
        batches = {x.shape[0] for x in inputs.values()}
        if len(batches) > 1:
            raise DataError(error(f"inputs disagree on the batch size: {sorted(batches)}"))
        batch = batches.pop()
        if args.batch is not None and args.batch != batch:
            if batch != 1:
                raise DataError(error(f"--batch {args.batch} but the input holds {batch} samples"))
            inputs = {k: np.repeat(v, args.batch, axis=0) for k, v in inputs.items()}
            batch = args.batch
    else:
        batch = args.batch or 1
        memory.check_fits(net, batch)  # before the random inputs are drawn
        inputs = data.random_inputs(net, batch, args.seed)
    session = Session.create(
        net,
        args.weights,
        seed=args.seed,
        device=args.device,
        batch=batch,
        algorithm=args.algorithm,
        tune=args.tune,
    )
    if args.save_weights:
        weights_io.save(session.weights, Path(args.save_weights))
    with telling_what_happens(session, batch):
        outputs = session.run(inputs)
    plan = session.plan
    print(
        f"plan: {len(plan.steps)} steps for {len(net.layers)} layers, activation buffers "
        f"{_mib(plan.peak_floats * batch * 4)} (naive {_mib(plan.naive_floats * batch * 4)})"
    )
    for name, y in outputs.items():
        with np.errstate(all="ignore"):  # statistics of inf/NaN outputs: no NumPy warnings
            stats = f"min {y.min():.6g}  max {y.max():.6g}  mean {y.mean():.6g}  std {y.std():.6g}"
        print(f"{name}: shape {fmt_shape(y.shape)}  {stats}")
        bad = int(np.size(y) - np.count_nonzero(np.isfinite(y)))
        if bad:
            print(
                f"cnnc: warning: output '{name}' holds {bad:,} NaN or infinite values",
                file=sys.stderr,
            )
        if y.ndim == 2:
            for n in range(min(y.shape[0], 4)):
                top = np.argsort(-y[n], kind="stable")[:5]
                ranked = ", ".join(f"{int(i)} ({y[n, i]:.4g})" for i in top)
                print(f"  sample {n} top-5: {ranked}")
            if y.shape[0] > 4:
                print(f"  ... {y.shape[0] - 4} more samples")
    if args.out:
        data.save_outputs(outputs, Path(args.out))
        print(f"wrote {args.out}")
    if args.save_weights:
        print(f"wrote {args.save_weights}")
    return 0


def bench_command(net: Network, args) -> int:
    if args.batch < 1 or args.repeat < 1:
        raise UsageError(error("--batch and --repeat must be at least 1"))
    if not args.time_limit > 0:  # also NaN
        raise UsageError(error("--time-limit must be a positive number of seconds"))
    session = Session.create(  # timing anyway: measure what the cache lacks too
        net, None, device=args.device, batch=args.batch, algorithm=args.algorithm, tune=True
    )

    def say_how_long(seconds: float):
        if seconds > args.time_limit:
            print(
                f"cnnc: {args.repeat:,} passes would take about {duration(seconds)}; timing "
                f"stops after {duration(args.time_limit)} (--time-limit)",
                file=sys.stderr,
                flush=True,
            )
        elif seconds > 5:
            print(
                f"cnnc: timing {args.repeat:,} passes, about {duration(seconds)}", file=sys.stderr
            )

    with telling_what_happens(session, args.batch):
        info = session.bench(
            args.batch, args.repeat, budget_s=args.time_limit, on_estimate=say_how_long
        )
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    rows = [
        (
            x["layer"],
            x["op"],
            fmt_shape(x["shape"]),
            f"{x['ms']:.3f}",
            f"{100 * x['share']:.1f}%",
            f"{x['gflops']:.1f}" if x["gflops"] else "",
            f"{100 * x['peak_share']:.0f}%" if x.get("peak_share") else "",
            x.get("algorithm", ""),
        )
        for x in info["layers"]
    ]
    print(
        f"network {net.name}, batch {info['batch']}, device {info['device']}"
        + (
            f" ({info['threads']} threads, {info['threading_layer']} threading layer)"
            if "threads" in info
            else ""
        )
    )
    print(
        table(
            ("layer", "op", "output", "ms", "share", "GFLOP/s", "of peak", "algorithm"),
            rows,
            right=(3, 4, 5, 6),
        )
    )
    print(
        f"total       {info['median_ms']:.3f} ms median of {info['repeat']} "
        f"(min {info['min_ms']:.3f} ms), {info['gflops']:.1f} GFLOP/s"
        + (f"; --time-limit reached before {args.repeat:,}" if info["stopped_early"] else "")
    )
    if "peak_gflops" in info:
        print(
            f"peak        {info['peak_gflops']:.1f} GFLOP/s fp32 (FMA probe, "
            f"{info['threads']} threads): this run reached {100 * info['peak_share']:.0f}%"
        )
        from .backends.cpu.autotune import is_busy

        if is_busy(info.get("peak_measured", {})):
            print(
                f"cnnc: note: the FMA peak was measured on a busy machine "
                f"({_load(info['peak_measured'])}); it is measured again once the machine is "
                "quiet",
                file=sys.stderr,
            )
    print(f"warm-up     {info['warmup_s']:.2f} s (includes kernel compilation on a cold cache)")
    if info.get("threading_layer") == "workqueue":
        print(
            "note: Numba runs on its slow 'workqueue' threading layer (about 90 us per parallel "
            "region instead of 1.5 us); install the OpenMP runtime (apt-get install libgomp1) "
            "or TBB (pip install tbb)",
            file=sys.stderr,
        )
    print(
        f"memory      {_mib(info['peak_activation_bytes'])} of activation buffers, reused by "
        f"liveness (naive sum {_mib(info['naive_activation_bytes'])})"
    )
    return 0


def training_memory(networks: list[Network], batch, optimizer: str) -> list[dict]:
    """``cnnc check --train``: each network's training estimate (memory.training_estimate)."""
    from .session import check_batch

    check_batch(batch)
    return [memory.training_estimate(net, batch, optimizer) for net in networks]


_STATE = {"sgd": "sgd momentum: 1 x weights", "adam": "adam moments: 2 x weights"}
_STATE["adamw"] = _STATE["adam"].replace("adam", "adamw", 1)


def training_memory_text(m: dict) -> str:
    """The lines ``cnnc check --train`` adds below a network's table."""
    rows = [
        ("activations kept", m["activations_kept"], "layer outputs the backward pass reads"),
        (
            "activations peak",
            m["activations_peak"],
            "activations and their gradients, laid out in one arena "
            f"({nbytes(m['activations_live'])} live at most)",
        ),
        ("weights", m["weights"], "learned"),
        ("gradients", m["gradients"], "of the learned weights"),
        ("optimizer state", m["optimizer_state"], _STATE[m["optimizer"]]),
        ("buffers", m["buffers"], "batch-norm running statistics"),
        ("packed weights", m["packed_weights"], "convolution weights in the kernels' layouts"),
        ("workspace", m["workspace"], "kernels' scratch"),
    ]
    width = max(len(nbytes(v)) for _, v, _ in rows + [("", m["peak"], "")])
    lines = [
        f"training    batch {m['batch']}, optimizer {m['optimizer']}, {m['steps']} steps (float32)"
    ]
    lines += [f"  {name:<18}{nbytes(v):>{width}}  {why}" for name, v, why in rows]
    lines.append(
        f"  {'peak':<18}{nbytes(m['peak']):>{width}}  planned for one step: the rows from "
        "'activations peak' down"
    )
    return "\n".join(lines)


def train_bench_command(net: Network, args) -> int:
    """``cnnc bench --train``: a whole training step's time, per layer forward and backward."""
    from .train_bench import bench_training

    if args.batch < 1 or args.repeat < 1:
        raise UsageError(error("--batch and --repeat must be at least 1"))
    if args.device == "cpu":
        from .backends.cpu import kernels_compiled

        if not kernels_compiled():
            print(
                "cnnc: compiling the CPU kernels for this machine (once; later runs load them "
                "from the cache)",
                file=sys.stderr,
                flush=True,
            )
    info = bench_training(net, args.batch, args.repeat, 0, args.device, args.algorithm)
    if args.json:
        print(json.dumps(info, indent=2))
        return 0

    def rate(g):
        return "" if not g else f"{g:.1f}" if g >= 0.1 else f"{g:.2g}"

    rows = [
        (
            x["layer"],
            x["op"],
            fmt_shape(x["shape"]),
            f"{x['forward_ms']:.3f}",
            f"{x['backward_ms']:.3f}",
            rate(x["forward_gflops"]),
            rate(x["backward_gflops"]),
            x["algorithm"],
        )
        for x in info["layers"]
    ]
    threads = (
        f" ({info['threads']} threads, {info['threading_layer']} threading layer)"
        if "threads" in info
        else ""
    )
    print(
        f"network {net.name}, training step, batch {info['batch']}, device {info['device']}"
        f"{threads}, loss {info['loss']} on random targets, {info['optimizer']}"
    )
    headers = ("layer", "op", "output", "fwd ms", "bwd ms", "fwd GFLOP/s", "bwd GFLOP/s")
    print(table((*headers, "algorithm"), rows, right=(3, 4, 5, 6)))
    per_layer = f"(median of {min(info['repeat'], 5)}, kernels timed one by one)"
    print(f"forward     {info['forward_ms']:.3f} ms {per_layer}")
    print(f"backward    {info['backward_ms']:.3f} ms")
    print(f"update      {info['update_ms']:.3f} ms (SGD in NumPy, running statistics, repacking)")
    print(
        f"step        {info['median_ms']:.3f} ms median of {info['repeat']} "
        f"(min {info['min_ms']:.3f} ms), {info['gflops']:.1f} GFLOP/s "
        "(3 x the forward pass's FLOPs)"
    )
    print(f"warm-up     {info['warmup_s']:.2f} s (includes kernel compilation on a cold cache)")
    print(
        f"memory      {nbytes(info['memory']['peak'])} planned peak (cnnc check --train: "
        f"activations kept {nbytes(info['memory']['activations_kept'])})"
    )
    return 0


def duration(seconds: float) -> str:
    """A wait in the unit a person reads it in: 40 s, 12 min, 5.0 h, 31 days, 32 years."""
    for unit, size in (("years", 365 * 86400), ("days", 86400), ("h", 3600), ("min", 60)):
        if seconds >= 2 * size:
            return f"{seconds / size:.0f} {unit}" if unit != "h" else f"{seconds / size:.1f} h"
    return f"{seconds:.0f} s" if seconds >= 10 else f"{seconds:.1f} s"


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


def tune_command(net: Network, args) -> int:
    from .tune import tune

    if args.batch < 1:
        raise DataError(error(f"--batch must be at least 1, got {args.batch}"))
    from .compiling import announce_compiling

    session = Session.create(net, None, batch=args.batch, tune=True)
    with announce_compiling(
        "cnnc: compiling the CPU kernels this network needs (first run on this machine)..."
    ):
        rows = tune(session, args.batch, force=args.force)
    backend = session._executor(args.batch).backend
    print(
        table(
            ("layer", "output", "algorithm"),
            [(r["layer"], fmt_shape(r["shape"][-1:] + r["shape"][:-1]), r["choice"]) for r in rows],
        )
    )
    print(f"{len(rows)} convolutions; choices cached in {backend.tune_cache().path}")
    cache = backend.tune_cache()
    busy = cache.busy_shapes(backend.choices)
    if busy:
        print(
            f"cnnc: note: {len(busy)} of these choices were measured on a busy machine "
            f"({_load(cache.entries[busy[0]])}); a later `cnnc tune` or `cnnc bench` measures "
            "them again once the machine is quiet",
            file=sys.stderr,
        )
    return 0


def layer_times(net: Network, batch: int, repeat: int, device: str) -> dict:
    """``cnnc view --bench``: each layer's measured time (Session.bench), by layer name. A
    fused step's time is its first layer's, and ``fused`` names the layers it includes."""
    if batch < 1 or repeat < 1:
        raise UsageError(error("--batch and --repeat must be at least 1"))
    session = Session.create(net, None, device=device, batch=batch)
    with telling_what_happens(session, batch):
        info = session.bench(batch, repeat)
    layers = {}
    for step, row in zip(session.plan.steps, info["layers"]):
        first, *rest = step.layers
        layers[first] = {"ms": row["ms"], "fused": rest, "algorithm": row.get("algorithm", "")}
    keep = ("median_ms", "min_ms", "batch", "device", "repeat", "threads")
    return {**{k: info[k] for k in keep if k in info}, "layers": layers}


def _load(measured: dict) -> str:
    """``load 9.1 on 2 cores, 2026-12-07 14:03`` from a measurement's conditions."""
    import time

    when = time.strftime("%Y-%m-%d %H:%M", time.localtime(measured.get("measured_at", 0)))
    return f"load {measured.get('load', 0):.1f} on {measured.get('cores', 1)} cores, {when}"
