"""``cnnc sweep``: every combination of network parameters checked (and timed) on Dask.

Each variant is one task: the worker elaborates the network from the parsed program with the
variant's parameters, costs it, and with ``--bench`` times it. A variant that fails is a row
carrying its error, never a crash of the sweep.
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import sys
from pathlib import Path

from ..compiler import CnncError, SpecError, UsageError, error, fmt_shape, table
from . import cluster
from .progress import Progress

MAX_VARIANTS = 10_000
#: Seconds of timed passes per variant with ``--bench``: a huge ``--repeat`` stops there.
VARIANT_TIME_LIMIT_S = 60.0


def parse_grid(items: list[str]) -> dict[str, list[str]]:
    """``NAME=V1,V2,...`` per item; values stay text for the elaborator to check."""
    grid: dict[str, list[str]] = {}
    for item in items:
        name, sep, values = item.partition("=")
        name = name.strip()
        parts = [v.strip() for v in values.split(",")]
        if not sep or not name.isidentifier() or not all(parts):
            raise UsageError(error(f"--grid '{item}': write NAME=V1,V2,..., e.g. width=16,32,64"))
        if name in grid:
            raise UsageError(error(f"--grid {name} given twice"))
        grid[name] = list(dict.fromkeys(parts))
    return grid


def variants(grid: dict[str, list[str]], fixed: dict[str, str]) -> list[dict[str, str]]:
    count = 1
    for values in grid.values():
        count *= len(values)
    if count > MAX_VARIANTS:
        raise UsageError(
            error(f"the grid has {count:,} combinations; the limit is {MAX_VARIANTS:,}")
        )
    names = list(grid)
    return [{**fixed, **dict(zip(names, combo))} for combo in itertools.product(*grid.values())]


def network_name(program, requested: str | None) -> str:
    if requested is not None:
        if requested not in program.networks:
            available = ", ".join(program.networks) or "none"
            raise SpecError(error(f"no network named '{requested}' (networks: {available})"))
        return requested
    names = program.root_networks
    if len(names) != 1:
        raise SpecError(
            error(
                f"{program.root.name} defines {len(names)} networks; choose one",
                hint="--network NAME",
            )
        )
    return names[0]


def evaluate(
    program, network: str, params: dict, bench: dict | None, train: dict | None = None
) -> dict:
    """One variant's row (runs on a Dask worker): costs, the time when benched, validation
    loss and accuracy and training time when trained."""
    row: dict = {"parameters": _numbers(params), "error": None}
    try:
        result = program.check(network, False, params)
        if not result.ok:
            raise SpecError(result.diagnostics)
        net = result.networks[0]
        from ..runtime import memory

        row["parameters"] = dict(net.parameters)
        row["params"] = net.total_params
        row["macs"] = net.total_macs
        row["activation_peak_bytes"] = memory.estimate(net, 1)["activations"]
        row["outputs"] = {k: list(v) for k, v in net.output_shapes.items()}
        if bench is not None:
            from ..runtime.session import Session

            session = Session.create(net, None, device=bench["device"], batch=bench["batch"])
            timed = session.bench(bench["batch"], bench["repeat"], budget_s=VARIANT_TIME_LIMIT_S)
            row["ms"] = timed["median_ms"]
        if train is not None:
            from .train import train_variant

            row.update(train_variant(net, train["settings"], train["device"]))
    except CnncError as exc:
        row["error"] = _one_line(exc)
    except Exception as exc:  # a bug in cnnc: the row says so, the sweep goes on
        row["error"] = f"internal error: {type(exc).__name__}: {exc}"
    return row


def _numbers(params: dict) -> dict:
    out = {}
    for k, v in params.items():
        for kind in (int, float):
            try:
                out[k] = kind(v)
                break
            except (TypeError, ValueError):
                out[k] = v
    return out


def _one_line(exc: CnncError) -> str:
    d = exc.diagnostics[0]
    where = f"{d.location.file}:{d.location.line}:{d.location.column}: " if d.location else ""
    more = f" (and {len(exc.diagnostics) - 1} more)" if len(exc.diagnostics) > 1 else ""
    return f"{where}{d.message}{more}"


def sweep_command(args) -> int:
    """Print one row per variant; exit 1 if any variant failed."""
    if (args.batch is not None and args.batch < 1) or args.repeat < 1:
        raise UsageError(error("--batch and --repeat must be at least 1"))
    train = training_of(args)
    if args.plot:
        from ..runtime import data

        data.check_output_path(Path(args.plot), "--plot", (".svg", ".png") if train else (".svg",))
    program = args.program  # parsed by the command line, with its --set values
    network = network_name(program, args.network)
    grid = parse_grid(args.grid)
    fixed = args.params_used
    program.check_param_names([program.networks[network]], {**fixed, **grid})
    todo = variants(grid, fixed)
    bench = (
        {"batch": args.batch or 1, "repeat": args.repeat, "device": args.device}
        if args.bench
        else None
    )
    rows = run_variants(program, network, todo, bench, args.scheduler, args.workers, train)
    names = list(grid) + [k for k in fixed if k not in grid]
    if args.json:
        print(json.dumps(rows, indent=2))
    elif args.csv:
        print(to_csv(rows, names, bench is not None, train is not None), end="")
    else:
        print(to_table(rows, names, bench is not None, train is not None))
    if args.plot:
        title = f"{network} ({Path(args.file).name})"
        if train is not None:
            from .plot import accuracy_plot

            accuracy_plot(rows, Path(args.plot), title)
        else:
            from .plot import sweep_svg

            sweep_svg(rows, Path(args.plot), title)
        print(f"wrote {args.plot}", file=sys.stderr)
    failed = sum(1 for r in rows if r["error"])
    if failed:
        print(f"cnnc: {failed} of {len(rows)} variants failed", file=sys.stderr)
    return 1 if failed else 0


def training_of(args) -> dict | None:
    """``--train``'s settings for every variant (data paths made absolute for the workers),
    checked once here; None without ``--train``."""
    from ..training.cli import given_settings
    from ..training.loop import Settings

    given = given_settings(args)
    if not args.train:
        extra = sorted(k for k in given if k != "seed")
        if extra:
            raise UsageError(error(f"--{extra[0].replace('_', '-')} goes with --train"))
        return None
    if args.batch is not None:
        given["batch"] = args.batch
    if "data" not in given:
        raise UsageError(error("--train needs --data TRAIN (an .npz, an image folder, digits)"))
    for key in ("data", "val"):
        if given.get(key) not in (None, "digits"):
            given[key] = str(Path(given[key]).resolve())
    Settings(**given).check()
    return {"settings": given, "device": args.device}


def run_variants(program, network, todo, bench, scheduler, workers, train=None) -> list[dict]:
    """Each variant's row, in order: on Dask when it is installed (or a scheduler is given),
    else one after another in this process, as folder runs do."""
    rows: list = [None] * len(todo)
    progress = Progress(len(todo), "variants")
    if scheduler is None and not cluster.available():
        print(
            "cnnc: note: Dask is not installed; running in this process "
            "(pip install 'cnnc[dask]' for a local cluster)",
            file=sys.stderr,
        )
        for i, params in enumerate(todo):
            rows[i] = evaluate(program, network, params, bench, train)
            progress.update(1, 1 if rows[i]["error"] else 0)
        progress.close()
        return rows
    cluster.require("cnnc sweep")
    from distributed import as_completed

    with cluster.client(scheduler, workers, "cnnc sweep") as client:
        shared = client.scatter(program, broadcast=True)
        futures = {
            client.submit(evaluate, shared, network, params, bench, train, pure=False): i
            for i, params in enumerate(todo)
        }
        for future in as_completed(futures):
            i = futures[future]
            try:
                rows[i] = future.result()
            except Exception as exc:  # the task itself was lost (a worker died)
                rows[i] = {"parameters": _numbers(todo[i]), "error": f"task failed: {exc}"}
            progress.update(1, 1 if rows[i]["error"] else 0)
    progress.close()
    return rows


TRAINED = ("val_loss", "val_accuracy", "train_s")


def _cells(row: dict, names: list[str], benched: bool, trained: bool = False) -> list[str]:
    values = [str(row["parameters"].get(n, "")) for n in names]
    extra = (1 if benched else 0) + (3 if trained else 0)
    if row["error"]:
        return values + [""] * (4 + extra) + [row["error"]]
    out = ", ".join(fmt_shape(tuple(s)) for s in row["outputs"].values())
    cells = [f"{row['params']:,}", f"{row['macs']:,}", _mib(row["activation_peak_bytes"]), out]
    if benched:
        cells.append(f"{row['ms']:.3f}")
    if trained:
        accuracy = row["val_accuracy"]
        cells += [
            f"{row['val_loss']:.4f}",
            "-" if accuracy is None else f"{100 * accuracy:.2f}%",
            f"{row['train_s']:.1f}",
        ]
    return values + cells + [""]


def to_table(rows: list[dict], names: list[str], benched: bool, trained: bool = False) -> str:
    headers = [*names, "params", "MACs", "act. peak", "output", *(["ms"] if benched else [])]
    headers += ["val_loss", "val_acc", "train_s"] if trained else []
    headers.append("error")
    body = [_cells(r, names, benched, trained) for r in rows]
    if not any(r["error"] for r in rows):
        headers.pop()
        body = [b[:-1] for b in body]
    right = tuple(range(len(names) + 3)) + ((len(names) + 4,) if benched else ())
    first = len(names) + 4 + (1 if benched else 0)
    right += tuple(range(first, first + 3)) if trained else ()
    return table(tuple(headers), body, right=right)


def to_csv(rows: list[dict], names: list[str], benched: bool, trained: bool = False) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    extra = (["ms"] if benched else []) + (list(TRAINED) if trained else [])
    writer.writerow([*names, "params", "macs", "activation_peak_bytes", "output", *extra, "error"])
    for r in rows:
        values = [r["parameters"].get(n, "") for n in names]
        if r["error"]:
            writer.writerow(values + [""] * (4 + len(extra)) + [r["error"]])
            continue
        out = " ".join(fmt_shape(tuple(s)) for s in r["outputs"].values())
        timing = [f"{r['ms']:.4f}"] if benched else []
        if trained:
            timing += ["" if r[k] is None else r[k] for k in TRAINED]
        writer.writerow(
            values + [r["params"], r["macs"], r["activation_peak_bytes"], out, *timing, ""]
        )
    return buffer.getvalue()


def _mib(n: int) -> str:
    return f"{n / 2**20:.2f} MiB"
