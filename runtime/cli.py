"""``cnnc run`` and ``cnnc bench``: argument handling and printing around runtime.session."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from ..compiler import DataError, Network, UsageError, error, fmt_shape, table
from . import data, memory
from . import weights as weights_io
from .session import Session


def _say_what_happens(session: Session, batch: int):
    """One line on stderr before a first run compiles the kernels, and before a layer's
    algorithms are measured: both take seconds once, then come from the cache."""
    if session.device != "cpu":
        return
    from .backends.cpu import kernels_compiled

    if not kernels_compiled():
        print(
            "cnnc: compiling the CPU kernels for this machine (once; later runs load them "
            "from the cache)",
            file=sys.stderr,
            flush=True,
        )
    backend = session._executor(batch).backend

    def measuring(label: str):
        print(
            "cnnc: measuring which convolution algorithms are fastest on this machine (once "
            "per layer shape; `cnnc tune FILE` does it ahead of time)",
            file=sys.stderr,
            flush=True,
        )
        backend.on_tune = None

    backend.on_tune = measuring


def run_command(net: Network, args) -> int:
    """One run of the inputs named (a folder or glob goes to jobs.folder first)."""
    if args.scheduler:
        raise UsageError(
            error("--scheduler runs a folder or glob of inputs: --input DIR --out DIR")
        )
    paths = data.parse_input_args(net, args.input)
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
    _say_what_happens(session, batch)
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
    session = Session.create(  # timing anyway: measure what the cache lacks too
        net, None, device=args.device, batch=args.batch, algorithm=args.algorithm, tune=True
    )
    _say_what_happens(session, args.batch)
    info = session.bench(args.batch, args.repeat)
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
    )
    if "peak_gflops" in info:
        print(
            f"peak        {info['peak_gflops']:.1f} GFLOP/s fp32 (FMA probe, "
            f"{info['threads']} threads): this run reached {100 * info['peak_share']:.0f}%"
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


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


def tune_command(net: Network, args) -> int:
    from .tune import tune

    if args.batch < 1:
        raise DataError(error(f"--batch must be at least 1, got {args.batch}"))
    session = Session.create(net, None, batch=args.batch, tune=True)
    rows = tune(session, args.batch, force=args.force)
    backend = session._executor(args.batch).backend
    print(
        table(
            ("layer", "output", "algorithm"),
            [(r["layer"], fmt_shape(r["shape"][-1:] + r["shape"][:-1]), r["choice"]) for r in rows],
        )
    )
    print(f"{len(rows)} convolutions; choices cached in {backend.tune_cache().path}")
    return 0
