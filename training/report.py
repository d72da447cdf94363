"""What a training run shows: one line per epoch, a progress bar within the epoch on a
terminal (tqdm), a CSV log appended a row per epoch, and loss and accuracy curves
(matplotlib). tqdm and matplotlib are the optional extra ``cnnc[train]``."""

from __future__ import annotations

import csv
import io
import sys
from pathlib import Path

from ..compiler import ResourceError, UsageError, error, table, write_atomically
from ..runtime.data import check_writable_dir

COLUMNS = (
    "epoch",
    "loss",
    "accuracy",
    "val_loss",
    "val_accuracy",
    "lr",
    "seconds",
    "images_per_second",
)


def _pct(value) -> str:
    return "-" if value is None else f"{100 * value:.2f}%"


def _num(value) -> str:
    return "-" if value is None else f"{value:.4f}"


def epoch_line(entry: dict, epochs: int) -> str:
    width = len(str(epochs))
    return (
        f"epoch {entry['epoch']:>{width}}/{epochs}  loss {_num(entry['loss'])}  "
        f"acc {_pct(entry['accuracy'])}  val_loss {_num(entry['val_loss'])}  "
        f"val_acc {_pct(entry['val_accuracy'])}  lr {entry['lr']:.4g}  "
        f"{entry['seconds']:.1f} s  {entry['images_per_second']:.0f} img/s"
    )


def progress_bar(epochs: int, stream=None):
    """``bar(total, epoch)``: a tqdm bar over an epoch's steps with an ETA, on a terminal
    only; None where stderr is a file or a pipe, or tqdm is not installed."""
    stream = stream or sys.stderr
    if not stream.isatty():
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None

    def bar(total: int, epoch: int):
        return tqdm(
            total=total,
            desc=f"epoch {epoch + 1}/{epochs}",
            unit="batch",
            leave=False,
            file=stream,
            dynamic_ncols=True,
        )

    return bar


class CsvLog:
    """``--log F.csv``: one row per epoch appended and flushed (a header when the file is new)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if self.path.suffix.lower() != ".csv":
            raise UsageError(error(f"--log '{self.path}': use a .csv file"))
        if self.path.is_dir():
            raise UsageError(error(f"--log '{self.path}' is a directory; give a file name"))
        parent = self.path.parent if str(self.path.parent) else Path(".")
        check_writable_dir(parent, f"--log '{self.path}'")

    def append(self, entry: dict) -> None:
        new = not self.path.exists() or self.path.stat().st_size == 0
        try:
            with open(self.path, "a", newline="") as fh:
                writer = csv.writer(fh)
                if new:
                    writer.writerow(COLUMNS)
                writer.writerow(["" if entry.get(c) is None else entry[c] for c in COLUMNS])
        except OSError as exc:
            raise ResourceError(
                error(f"cannot write --log '{self.path}': {exc.strerror or exc}")
            ) from None


PLOT_SUFFIXES = (".svg", ".png")


def require_matplotlib(option: str = "--plot"):
    try:
        import matplotlib

        matplotlib.use("Agg")
        matplotlib.rcParams["svg.fonttype"] = "none"  # text as text: small, searchable SVGs
        import matplotlib.pyplot as plt
    except ImportError:
        raise ResourceError(
            error(
                f"{option} draws with matplotlib, which is not installed",
                hint="pip install 'cnnc[train]'",
            )
        ) from None
    return plt


def check_plot_path(path: str | Path) -> Path:
    from ..runtime.data import check_output_path

    path = Path(path)
    check_output_path(path, "--plot", PLOT_SUFFIXES)
    require_matplotlib()
    return path


def plot_history(history: list[dict], path: Path, title: str) -> None:
    """Loss and accuracy per epoch, training and validation, written atomically."""
    plt = require_matplotlib()
    from matplotlib.ticker import MaxNLocator

    epochs = [h["epoch"] for h in history]
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.4))
    for ax, key, label in ((left, "loss", "loss"), (right, "accuracy", "accuracy")):
        for prefix, style in (("", "-o"), ("val_", "-s")):
            values = [h.get(prefix + key) for h in history]
            if any(v is not None for v in values):
                points = [(e, v) for e, v in zip(epochs, values) if v is not None]
                ax.plot(
                    *zip(*points),
                    style,
                    ms=3,
                    label=("validation " if prefix else "training ") + label,
                )
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format=path.suffix.lower()[1:])
    plt.close(fig)
    write_atomically(path, buffer.getvalue())


def metrics_text(result: dict, class_names: list[str] | None = None) -> str:
    """``cnnc eval``'s report: loss, top-1 (top-5), and the confusion matrix."""
    lines = [f"samples   {result['samples']}", f"loss      {result['loss']:.4f}"]
    if result.get("accuracy") is not None:
        lines.append(f"top-1     {100 * result['accuracy']:.2f}%")
    if "top5" in result:
        lines.append(f"top-5     {100 * result['top5']:.2f}%")
    matrix = result.get("confusion")
    if matrix is not None:
        names = class_names or [str(i) for i in range(len(matrix))]
        lines.append("confusion matrix (rows: true class, columns: predicted)")
        rows = [(names[i], *map(str, row)) for i, row in enumerate(matrix)]
        lines.append(table(("", *names), rows, right=tuple(range(1, len(names) + 1))))
    return "\n".join(lines)
