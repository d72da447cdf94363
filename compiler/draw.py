"""Drawing networks with Graphviz: walk the network into nodes, edges and clusters, then render.

One node per layer, labelled in the slides' notation (``conv 3x3 /2, 64``) with its parameter
count; edges carry tensor shapes; block instances become nested clusters, or single nodes with
``collapse``. Colours follow the op family and a legend lists the families used. Writing
``.dot`` needs no Graphviz binary; other formats call ``dot`` and are written atomically.
"""

from __future__ import annotations

import html
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from .diagnostics import ResourceError, UsageError, error
from .files import write_atomically
from .ops import OPS, fmt_shape

if TYPE_CHECKING:  # types only: network.py imports this module
    from .network import Instance, Layer, Network

FORMATS = {".svg": "svg", ".png": "png", ".pdf": "pdf", ".dot": "dot", ".gv": "dot"}

#: (fill, border) per op family: pastel fills that print well, darker borders.
PALETTE = {
    "input": ("#37474f", "#263238"),
    "conv": ("#bbdefb", "#1565c0"),
    "fc": ("#ffe0b2", "#e65100"),
    "pool": ("#c8e6c9", "#2e7d32"),
    "norm": ("#fff9c4", "#f9a825"),
    "activation": ("#ffcdd2", "#c62828"),
    "merge": ("#e1bee7", "#6a1b9a"),
    "resample": ("#b2ebf2", "#00838f"),
    "shape": ("#eceff1", "#607d8b"),
    "block": ("#f5f5f5", "#424242"),
}
FAMILY_NAMES = {
    "conv": "convolution",
    "fc": "fully connected",
    "pool": "pooling",
    "norm": "normalisation",
    "activation": "activation",
    "merge": "merge",
    "resample": "resample / up-conv",
    "shape": "reshape / crop / dropout",
    "block": "block (collapsed)",
}


def family(layer: Layer) -> str:
    return "input" if layer.op == "input" else OPS[layer.op].family


def _count(n: int) -> str:
    return f"{n:,}"


def _label(title: str, lines: list[str], dark: bool = False) -> str:
    """An HTML-like label: a bold title and small grey detail lines."""
    colour = "#eceff1" if dark else "#455a64"
    rows = [f"<B>{html.escape(title)}</B>"]
    rows += [f'<FONT POINT-SIZE="9" COLOR="{colour}">{html.escape(x)}</FONT>' for x in lines]
    return "<" + "<BR/>".join(rows) + ">"


def _node_attrs(fam: str, label: str, shape: str = "box") -> dict:
    fill, border = PALETTE[fam]
    return {
        "label": label,
        "shape": shape,
        "style": "rounded,filled",
        "fillcolor": fill,
        "color": border,
        "fontcolor": "white" if fam == "input" else "black",
        "fontname": "Helvetica",
        "penwidth": "1.2",
    }


def node_names(net: Network) -> dict[str, str]:
    """Each layer's Graphviz node, by layer name: the ``<title>`` of its group in the SVG."""
    return {layer.name: f"n{i}" for i, layer in enumerate((*net.inputs.values(), *net.layers))}


def build(net: Network, collapse: bool = False, rankdir: str = "TB"):
    """Return a ``graphviz.Digraph`` of the network (nothing is rendered yet)."""
    import graphviz

    if rankdir not in ("TB", "LR"):
        raise UsageError(error(f"rankdir must be TB or LR, got {rankdir!r}"))
    g = graphviz.Digraph(
        net.name,
        graph_attr={
            "rankdir": rankdir,
            "fontname": "Helvetica",
            "ordering": "out",
            "nodesep": "0.25",
            "ranksep": "0.35",
            "label": f"{net.name}: {_count(net.total_params)} params, "
            f"{_count(net.total_macs)} MACs",
            "labelloc": "t",
            "fontsize": "16",
        },
        edge_attr={
            "fontname": "Helvetica",
            "fontsize": "9",
            "color": "#546e7a",
            "fontcolor": "#37474f",
            "arrowsize": "0.7",
        },
    )

    names = node_names(net)
    ids = {id(layer): names[layer.name] for layer in (*net.inputs.values(), *net.layers)}

    # In collapsed mode every layer inside a top-level instance maps to that instance's node.
    owner: dict[int, Instance] = {}
    if collapse:
        for layer in net.layers:
            path = layer.block_path
            if path:
                owner[id(layer)] = path[0]

    def node_of(layer: Layer) -> str:
        inst = owner.get(id(layer))
        return f"b{id(inst)}" if inst is not None else ids[id(layer)]

    families = set()

    # Nodes: a tree of clusters following the block instances.
    tree: dict = {"layers": [], "children": {}}
    for layer in net.layers:
        if id(layer) in owner:
            continue
        node = tree
        for inst in layer.block_path:
            node = node["children"].setdefault(
                id(inst), {"inst": inst, "layers": [], "children": {}}
            )
        node["layers"].append(layer)

    def emit_layer(graph, layer):
        fam = family(layer)
        families.add(fam)
        details = [layer.name]
        if layer.params:
            details.append(f"{_count(layer.params)} params")
        graph.node(ids[id(layer)], **_node_attrs(fam, _label(layer.label, details)))

    def emit(graph, node, depth):
        for layer in node["layers"]:
            emit_layer(graph, layer)
        for child in node["children"].values():
            inst = child["inst"]
            with graph.subgraph(name=f"cluster_{id(inst)}") as sub:
                sub.attr(
                    label=f"{inst.local}: {inst.describe()}",
                    style="rounded,dashed",
                    color="#78909c",
                    fontcolor="#37474f",
                    fontsize="10",
                    bgcolor="#fafafa" if depth % 2 == 0 else "#f0f4f7",
                )
                emit(sub, child, depth + 1)

    for name, layer in net.inputs.items():
        families.add("input")
        g.node(
            ids[id(layer)],
            **_node_attrs(
                "input", _label(f"input {name}", [fmt_shape(layer.shape)], dark=True), "box"
            ),
        )
    emit(g, tree, 0)

    if collapse:
        groups: dict[int, list[Layer]] = {}
        for layer in net.layers:
            if id(layer) in owner:
                groups.setdefault(id(owner[id(layer)]), []).append(layer)
        for members in groups.values():
            inst = owner[id(members[0])]
            families.add("block")
            params = sum(m.params for m in members)
            macs = sum(m.macs for m in members)
            details = [
                inst.name,
                f"{len(members)} layers, {_count(params)} params",
                f"{_count(macs)} MACs",
            ]
            g.node(f"b{id(inst)}", **_node_attrs("block", _label(inst.describe(), details)))

    # Edges, labelled with the shape they carry (once per pair of drawn nodes).
    drawn = set()
    for layer in net.layers:
        for src in layer.inputs:
            a, b = node_of(src), node_of(layer)
            if a == b or (a, b) in drawn:
                continue
            drawn.add((a, b))
            g.edge(a, b, label=" " + fmt_shape(src.shape))

    for name, layer in net.outputs.items():
        out_id = f"out_{name}"
        families.add("input")
        g.node(
            out_id,
            **_node_attrs(
                "input", _label(f"output {name}", [fmt_shape(layer.shape)], dark=True), "oval"
            ),
        )
        g.edge(node_of(layer), out_id, label=" " + fmt_shape(layer.shape))

    used = [f for f in PALETTE if f in families and f != "input"]
    if used:
        cells = "".join(
            f'<TR><TD BGCOLOR="{PALETTE[f][0]}" COLOR="{PALETTE[f][1]}" BORDER="1" '
            f'WIDTH="14"> </TD><TD ALIGN="LEFT"><FONT POINT-SIZE="9">{FAMILY_NAMES[f]}'
            "</FONT></TD></TR>"
            for f in used
        )
        g.node(
            "legend",
            label=f'<<TABLE BORDER="1" COLOR="#b0bec5" CELLBORDER="0" '
            f'CELLSPACING="3" CELLPADDING="2" STYLE="ROUNDED"><TR><TD COLSPAN="2">'
            f'<FONT POINT-SIZE="10">legend</FONT></TD></TR>{cells}</TABLE>>',
            shape="plain",
            fontname="Helvetica",
        )
    return g


def render(net: Network, out: str | Path, collapse: bool = False, rankdir: str = "TB") -> Path:
    """Write the drawing to ``out``; the format follows its suffix.

    Nothing is written unless the whole file is: output goes to a temporary file first.
    """
    out = Path(out)
    fmt = FORMATS.get(out.suffix.lower())
    if fmt is None:
        raise UsageError(
            error(
                f"cannot tell the format of '{out}' from its suffix",
                hint="use one of: " + ", ".join(sorted(set(FORMATS))),
            )
        )
    graph = build(net, collapse, rankdir)
    if fmt == "dot":
        data = graph.source.encode("utf-8")
    else:
        if shutil.which("dot") is None:
            raise ResourceError(
                error(
                    f"drawing {out.suffix} needs the Graphviz 'dot' program, which is not "
                    "installed",
                    hint="install Graphviz (Debian/Ubuntu: apt-get install graphviz; macOS: brew "
                    "install graphviz), or write a .dot file, which needs no Graphviz",
                )
            )
        import graphviz

        try:
            data = graph.pipe(format=fmt, quiet=True)
        except (graphviz.ExecutableNotFound, graphviz.CalledProcessError, OSError) as exc:
            raise ResourceError(error(f"Graphviz failed to render {out}: {exc}")) from None
    write_atomically(out, data)
    return out
