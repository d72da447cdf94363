"""``cnnc view``: one self-contained HTML page to explore a network in a browser.

The page holds the Graphviz drawing as inline SVG, the layer table and the data behind both
(each layer's row, its spec lines and its ``--explain`` arithmetic) as JSON; the template,
script and style beside this module (view.html, view.js, view.css) are inlined too, so the
page loads nothing from anywhere.
Measured times come from the runtime (``cnnc view --bench``), passed in as plain numbers: this
module imports no runtime.
"""

from __future__ import annotations

import html
import json
import re
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

from .diagnostics import UsageError, error
from .display import NO_DOT, svg
from .draw import PALETTE, family, node_names
from .explain import explain_text, source_lines
from .files import write_atomically
from .ops import fmt_shape
from .report import rf_text, signature, totals

if TYPE_CHECKING:  # types only: network.py imports this module's neighbours
    from .network import Network

SUFFIXES = (".html", ".htm")


def _asset(name: str) -> str:
    return resources.files(__package__).joinpath(name).read_text(encoding="utf-8")


def page_data(net: Network, timings: dict | None = None) -> dict:
    """What the page's script reads: the network's totals and one record per layer.

    ``timings`` (from ``cnnc view --bench``): ``{"layers": {name: {"ms", "fused"}},
    "median_ms", "batch", "device", "repeat"}``, where ``fused`` lists the layers whose time
    is counted in that one's (a fused step)."""
    nodes = node_names(net)
    timed = (timings or {}).get("layers", {})
    fused_into = {other: name for name, t in timed.items() for other in t.get("fused", [])}
    layers = []
    for layer in (*net.inputs.values(), *net.layers):
        fam = family(layer)
        record = {
            "name": layer.name,
            "op": layer.op,
            "label": layer.label or layer.op,
            "family": fam,
            "colour": PALETTE[fam][0],
            "shape": fmt_shape(layer.shape),
            "params": layer.params,
            "macs": layer.macs,
            "memory": layer.memory,
            "rf": rf_text(tuple(layer.rf.size)) if layer.rf else "-",
            "rf_size": layer.rf.size[0] * layer.rf.size[1] if layer.rf else 0,
            "line": layer.location.line if layer.location else None,
            "file": layer.location.file if layer.location else None,
            "inputs": [i.name for i in layer.inputs],
            "node": nodes[layer.name],
            "source": source_lines(layer),
            "explain": explain_text(net, layer),
        }
        if timings is not None:
            record["ms"] = timed[layer.name]["ms"] if layer.name in timed else None
            record["fused_into"] = fused_into.get(layer.name)
        layers.append(record)
    return {
        "name": net.name,
        "file": net.file,
        "signature": signature(net),
        "totals": totals(net),
        "outputs": {name: layer.name for name, layer in net.outputs.items()},
        "bench": None if timings is None else {k: v for k, v in timings.items() if k != "layers"},
        "layers": layers,
    }


def page(net: Network, timings: dict | None = None) -> str:
    """The whole page as one string."""
    picture = svg(net)
    data = page_data(net, timings)
    data["no_drawing"] = NO_DOT if picture is None else None
    # JSON inside <script>: no "<" at all, so that nothing in it can end the element.
    payload = json.dumps(data, separators=(",", ":")).replace("<", "\\u003c")
    parts = {
        "title": html.escape(f"{net.name} - cnnc view"),
        "style": _asset("view.css"),
        "heading": html.escape(signature(net)),
        "file": html.escape(net.file),
        "drawing": picture or f'<p class="no-drawing">{html.escape(NO_DOT)}</p>',
        "data": payload,
        "script": _asset("view.js"),
    }
    # One pass: text put in (a spec line, a label) is never searched for placeholders.
    return re.sub(r"\{\{(\w+)\}\}", lambda m: parts[m.group(1)], _asset("view.html"))


def write(net: Network, out: str | Path, timings: dict | None = None) -> Path:
    """Write the page to ``out`` (.html), all or nothing."""
    out = Path(out)
    if out.suffix.lower() not in SUFFIXES:
        raise UsageError(
            error(f"cnnc view writes an HTML page; '{out}' does not end in .html", hint=None)
        )
    write_atomically(out, page(net, timings).encode("utf-8"))
    return out
