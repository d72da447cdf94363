"""Human-readable tables for ``cnnc check``: per-network layers and a summary row per network."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .ops import fmt_shape

if TYPE_CHECKING:  # types only: network.py imports this module
    from .network import Network


def count(n: int) -> str:
    """Thousands separators: 25,557,032."""
    return f"{n:,}"


def scaled(n: float, unit: str = "") -> str:
    """Short form with k/M/G/T: 4.09 G."""
    for factor, prefix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= factor:
            return f"{n / factor:.2f} {prefix}{unit}"
    return f"{n:g} {unit}".rstrip()


def millions(n: int) -> str:
    """Millions at the precision papers use: 138 for VGG-16, 25.6 for ResNet-50, 0.06 for LeNet."""
    m = n / 1e6
    return f"{m:.0f}" if m >= 100 else f"{m:.1f}" if m >= 1 else f"{m:.2f}"


def nbytes(n: int) -> str:
    for factor, prefix in ((2**30, "GiB"), (2**20, "MiB"), (2**10, "KiB")):
        if n >= factor:
            return f"{n / factor:.1f} {prefix}"
    return f"{n} B"


def table(headers, rows, right=()) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *rows)]

    def line(cells):
        return "  ".join(
            str(c).rjust(w) if i in right else str(c).ljust(w)
            for i, (c, w) in enumerate(zip(cells, widths))
        ).rstrip()

    rule = "-" * len(line(headers))
    return "\n".join([line(headers), rule, *(line(r) for r in rows), rule])


def signature(net: Network) -> str:
    """``lenet5(x: 1x32x32) -> out: 10``, with the network parameters used."""
    ins = ", ".join(
        [f"{k}: {fmt_shape(v)}" for k, v in net.input_shapes.items()]
        + [f"{k}={v}" for k, v in net.parameters.items()]
    )
    outs = ", ".join(f"{k}: {fmt_shape(v)}" for k, v in net.output_shapes.items())
    return f"{net.name}({ins}) -> {outs}"


def totals(net: Network) -> list[tuple[str, str]]:
    """The totals under the layer table, as (label, value) pairs."""
    return [
        ("layers", f"{len(net.layers):,}"),
        ("params", f"{count(net.total_params)} ({scaled(net.total_params)})"),
        ("MACs", f"{count(net.total_macs)} ({scaled(net.total_macs)}) per sample"),
        ("FLOPs", f"{count(net.total_flops)} ({scaled(net.total_flops)}) = 2 x MACs"),
        (
            "activations",
            f"{nbytes(net.activation_memory)} per sample (float32, sum of all layer outputs)",
        ),
        ("weights", f"{nbytes(net.weight_memory)} (float32, with batch-norm statistics)"),
    ]


def rf_text(rf) -> str:
    """A receptive field (h, w) as the table prints it: 7, or 7x5."""
    if rf is None:
        return "-"
    h, w = rf
    return f"{h}" if h == w else f"{h}x{w}"


def network_table(net: Network) -> str:
    rows = [
        (
            row["name"],
            row["op"],
            fmt_shape(row["shape"]),
            count(row["params"]),
            count(row["macs"]),
            rf_text(row["rf"]),
        )
        for row in net.table()
    ]
    body = table(("layer", "op", "output", "params", "MACs", "RF"), rows, right=(3, 4, 5))
    return "\n".join([f"network {signature(net)}", body, *(f"{k:<11} {v}" for k, v in totals(net))])


def summary_table(nets: list[Network]) -> str:
    rows = [
        (
            n.name,
            ", ".join(fmt_shape(v) for v in n.input_shapes.values()),
            ", ".join(fmt_shape(v) for v in n.output_shapes.values()),
            f"{len(n.layers):,}",
            count(n.total_params),
            millions(n.total_params),
            count(n.total_macs),
            f"{n.total_macs / 1e9:.2f}",
        )
        for n in nets
    ]
    return table(
        ("network", "input", "output", "layers", "params", "params (M)", "MACs", "GMACs"),
        rows,
        right=(3, 4, 5, 6, 7),
    )
