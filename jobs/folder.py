"""``cnnc run --input DIR_OR_GLOB --out DIR``: many input files, in batches, on Dask.

Each input file gives one output file ``DIR/STEM.npy`` (``.npz`` keyed by output name for a
network with several outputs), written atomically, so an interrupted run resumes by skipping
the outputs that exist. A file that cannot be read is reported by name and the others go on.
Workers read the inputs and write the outputs themselves, so on a remote cluster both folders
must be on storage every worker sees; the weights are sent once to each worker.
"""

from __future__ import annotations

import errno
import glob
import os
import stat
import sys
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..compiler import CnncError, DataError, Network, UsageError, error
from ..runtime import data
from .progress import Progress

SUFFIXES = (".npy", *data.IMAGE_SUFFIXES)
MAX_FILES = 1_000_000
DEFAULT_BATCH = 8


def _target(spec: str) -> str:
    name, sep, rest = spec.partition("=")
    return rest if sep and name.isidentifier() and not Path(spec).exists() else spec


def is_many(specs: list[str]) -> bool:
    """One ``--input`` naming a folder, or a glob pattern that is not itself a file."""
    if len(specs) != 1:
        return False
    path = _target(specs[0])
    return Path(path).is_dir() or (glob.has_magic(path) and not Path(path).exists())


def check_folders_exist(specs: list[str]):
    """An ``--input`` written as a folder (``DIR/``) that does not exist is named as such,
    not taken for a missing file of a single run."""
    for spec in specs:
        path = _target(spec)
        if path.endswith(("/", os.sep)) and not Path(path).is_dir():
            raise DataError(error(f"--input '{spec}': no such folder"))


def find_inputs(spec: str) -> tuple[list[Path], list[tuple[Path, str]]]:
    """The input files of a folder or glob, and the entries named like inputs that are not
    regular files, each with the reason (a dangling link, a FIFO, a directory, ...)."""
    path = _target(spec)
    if Path(path).is_dir():
        found = (p for p in Path(path).iterdir())
    else:
        found = (Path(p) for p in glob.iglob(path, recursive=True))
    files, unusable = [], []
    for p in found:
        if p.suffix.lower() not in SUFFIXES:
            continue
        reason = not_a_regular_file(p)
        if reason is None:
            files.append(p)
        else:
            unusable.append((p, reason))
        if len(files) + len(unusable) > MAX_FILES:
            raise DataError(error(f"--input '{spec}' matches over {MAX_FILES:,} files"))
    if not files:
        raise DataError(
            [error(f"--input '{spec}': no {', '.join(SUFFIXES)} files found", hint=None)]
            + [error(f"'{p}' is {reason}") for p, reason in sorted(unusable)]
        )
    return sorted(files), sorted(unusable)


def not_a_regular_file(path: Path) -> str | None:
    """Why ``path`` cannot be read as an input file, or None for a regular file. Only stat is
    called: a FIFO or a device found in a folder is never opened."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        return "a dangling symbolic link" if path.is_symlink() else "gone (deleted while listed)"
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "a symbolic link loop"
        return f"unreadable ({exc.strerror or exc})"
    if stat.S_ISREG(mode):
        return None
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a named pipe (FIFO)"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return "not a regular file"


def check_apart(spec: str, out_dir: Path, files: list[Path]):
    """Refuse an output folder the inputs are read from: its outputs would be inputs of the
    rerun that resumes it (and an input could be its own output, skipped as done)."""
    out = out_dir.resolve()
    source = _target(spec)
    if Path(source).is_dir():
        read = {Path(source).resolve()}
    else:
        read = {f.parent.resolve() for f in files}
    inside = False
    if "**" in source:  # a recursive glob also reads every folder below its fixed part
        parts = Path(source).parts
        magic = next(i for i, part in enumerate(parts) if glob.has_magic(part))
        fixed = Path(*parts[:magic]) if magic else Path(".")
        inside = out.is_relative_to(fixed.resolve())
    if out in read or inside:
        raise UsageError(
            error(
                f"--out '{out_dir}' is a folder that --input '{spec}' reads; a folder run "
                "there would read its own outputs",
                hint="write the outputs to another folder",
            )
        )


@dataclass
class Job:
    """What every task needs, sent once per worker: how to rebuild the network there."""

    program: object  # compiler Program (picklable, unlike a deep Network)
    network: str
    params: dict
    device: str
    normalize: str | None
    key: str  # identifies this run's session in a worker's cache


def run_command(net: Network, args) -> int:
    from ..runtime import weights as weights_io

    if len(net.inputs) != 1:
        raise UsageError(
            error(
                f"a folder run feeds one input per file; '{net.name}' has {len(net.inputs)}",
                hint="run each sample with --input NAME=PATH ...",
            )
        )
    if not args.out:
        raise UsageError(error("a folder run needs --out DIR for its output files"))
    out_dir = Path(args.out)
    if out_dir.is_file() or (not out_dir.exists() and out_dir.suffix.lower() in (".npy", ".npz")):
        raise UsageError(error(f"--out '{out_dir}': a folder run writes into a folder, not a file"))
    if args.save_weights:
        data.check_output_path(
            Path(args.save_weights), "--save-weights", (".npz",), avoid=[args.weights]
        )
    files, unusable = find_inputs(args.input[0])
    check_apart(args.input[0], out_dir, files + [p for p, _ in unusable])
    suffix = ".npy" if len(net.outputs) == 1 else ".npz"
    targets = _targets(files, out_dir, suffix)
    weights = (
        weights_io.load(net, args.weights)
        if args.weights
        else weights_io.initialise(net, args.seed)
    )
    if not out_dir.exists():
        data.check_writable_dir(out_dir.parent, f"--out '{out_dir}'")
        out_dir.mkdir()
    data.check_writable_dir(out_dir, f"--out '{out_dir}'")
    if args.save_weights:
        weights_io.save(weights, Path(args.save_weights))
    pending = [(f, t) for f, t in zip(files, targets) if not t.exists()]
    skipped = len(files) - len(pending)
    batch = args.batch or DEFAULT_BATCH
    chunks = [pending[i : i + batch] for i in range(0, len(pending), batch)]
    job = Job(
        args.program, net.name, args.params_used, args.device, args.normalize, uuid.uuid4().hex
    )
    progress = Progress(len(pending), "inputs")
    failures: list[tuple[str, str]] = []
    shown = {str(f.resolve()): str(f) for f, _ in pending}
    t0 = time.perf_counter()
    if chunks:
        for results in _execute(job, weights, chunks, args):
            bad = [(shown.get(path, path), msg) for path, msg in results if msg is not None]
            failures.extend(bad)
            progress.update(len(results), len(bad))
    progress.close()
    elapsed = time.perf_counter() - t0
    for path, reason in unusable:  # stat only: a loop or a FIFO is never resolved or opened
        print(f"cnnc: error: {path}: not an input file: it is {reason}", file=sys.stderr)
    for path, message in failures:
        message = message.replace(str(Path(path).resolve()), path)
        where = "" if f"'{path}'" in message else f"{path}: "
        print(f"cnnc: error: {where}{message}", file=sys.stderr)
    done = len(pending) - len(failures)
    failed = len(failures) + len(unusable)
    print(
        f"ran {done} of {len(files) + len(unusable)} inputs in {elapsed:.1f} s"
        + (f", {skipped} skipped (output exists)" if skipped else "")
        + (f", {failed} failed" if failed else "")
        + f"; outputs in {out_dir}/"
    )
    return 1 if failed else 0


def _targets(files: list[Path], out_dir: Path, suffix: str) -> list[Path]:
    by_stem: dict[str, Path] = {}
    for f in files:
        if f.stem in by_stem:
            raise DataError(
                error(
                    f"'{by_stem[f.stem]}' and '{f}' would both write {out_dir / (f.stem + suffix)}",
                    hint="give each input a different name",
                )
            )
        by_stem[f.stem] = f
    return [out_dir / (f.stem + suffix) for f in files]


def _execute(job: Job, weights: dict, chunks: list, args):
    """Yield each chunk's results as it finishes: on Dask when it is installed (or asked
    for), else in this process."""
    from . import cluster

    if args.scheduler is None and not cluster.available():
        print(
            "cnnc: note: Dask is not installed; running in this process "
            "(pip install 'cnnc[dask]' for a local cluster)",
            file=sys.stderr,
        )
        for chunk in chunks:
            yield run_chunk(job, weights, [(str(f.resolve()), str(t.resolve())) for f, t in chunk])
        return
    from distributed import as_completed

    with cluster.client(args.scheduler, args.workers, "a folder run") as client:
        # the weights and the program go once to each worker, not with every task
        shared = client.scatter(weights, broadcast=True)
        shared_job = client.scatter(job, broadcast=True)
        futures = [
            client.submit(
                run_chunk,
                shared_job,
                shared,
                [(str(f.resolve()), str(t.resolve())) for f, t in chunk],
                pure=False,
            )
            for chunk in chunks
        ]
        for future in as_completed(futures):
            yield future.result()


_SESSIONS: dict[str, object] = {}  # per process: the session of the current run
STATS = Counter()  # per process: sessions built and chunks run (tests check reuse with it)


def session_for(job: Job, weights: dict, batch: int):
    """The worker's compiled session for this run, built once and reused by its tasks."""
    from ..runtime.session import Session

    if job.key not in _SESSIONS:
        _SESSIONS.clear()
        result = job.program.check(job.network, False, job.params)
        if not result.ok:
            raise DataError(result.diagnostics)
        net = result.networks[0]
        _SESSIONS[job.key] = Session.create(net, weights, device=job.device, batch=batch)
        STATS["sessions"] += 1
    STATS["chunks"] += 1
    return _SESSIONS[job.key]


def run_chunk(job: Job, weights: dict, chunk: list[tuple[str, str]]) -> list:
    """Run one batch of input files; return ``[(input path, error message or None)]``."""
    session = session_for(job, weights, len(chunk))
    net = session.network
    (name, layer) = next(iter(net.inputs.items()))
    arrays, results, loaded = [], [], []
    for src, dst in chunk:
        try:
            arrays.append(data.load_input(Path(src), name, layer.shape, job.normalize, True))
            loaded.append((src, dst))
        except CnncErrorTypes as exc:
            results.append((src, _message(exc)))
    if not arrays:
        return results
    try:
        outputs = session.run({name: np.concatenate(arrays)})
    except CnncErrorTypes as exc:
        return results + [(src, _message(exc)) for src, _ in loaded]
    start = 0
    for (src, dst), x in zip(loaded, arrays):
        stop = start + x.shape[0]
        try:
            data.save_outputs({k: v[start:stop] for k, v in outputs.items()}, Path(dst))
            results.append((src, None))
        except CnncErrorTypes as exc:
            results.append((src, _message(exc)))
        start = stop
    return results


def _message(exc) -> str:
    text = "; ".join(d.message for d in exc.diagnostics) if hasattr(exc, "diagnostics") else ""
    return text or f"{type(exc).__name__}: {exc}"


CnncErrorTypes = (CnncError, OSError, ValueError, MemoryError)
