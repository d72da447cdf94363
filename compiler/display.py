"""A network shown in Jupyter (``Network._repr_mimebundle_``) and the parts ``cnnc view`` shares:
the drawing as inline SVG and the layer table with totals as HTML.

Nothing here imports IPython: a notebook asks the object for its MIME bundle, and the bundle is
plain strings. The SVG comes from graphviz's ``pipe``; without the ``dot`` binary the bundle
holds the table and one line saying how to get the picture.
"""

from __future__ import annotations

import html
import re
import shutil
from typing import TYPE_CHECKING

from .draw import build
from .ops import fmt_shape
from .report import count, rf_text, signature, totals

if TYPE_CHECKING:  # types only: network.py imports this module
    from .network import Network

NO_DOT = (
    "The drawing needs Graphviz's 'dot' program: apt-get install graphviz (Debian/Ubuntu), "
    "brew install graphviz (macOS) or conda install graphviz, then display the network again."
)
#: The XML declaration, DOCTYPE and comments graphviz writes before the <svg> element.
_PROLOG = re.compile(r"\A.*?(?=<svg)", re.S)


def svg(net: Network, collapse: bool = False, rankdir: str = "TB") -> str | None:
    """The drawing as an ``<svg>`` element to inline in HTML, or None without Graphviz."""
    if shutil.which("dot") is None:
        return None
    import graphviz

    try:
        text = build(net, collapse, rankdir).pipe(format="svg", encoding="utf-8", quiet=True)
    except (graphviz.ExecutableNotFound, graphviz.CalledProcessError, OSError):
        return None
    return _PROLOG.sub("", text, count=1)


def html_table(net: Network) -> str:
    """``cnnc check``'s table and totals as an HTML fragment (a scrolling box)."""
    esc = html.escape
    head = "".join(
        f'<th style="text-align:{"right" if right else "left"}">{name}</th>'
        for name, right in (
            ("layer", 0),
            ("op", 0),
            ("output", 0),
            ("params", 1),
            ("MACs", 1),
            ("RF", 1),
            ("line", 1),
        )
    )
    rows = []
    for row in net.table():
        cells = (
            (esc(row["name"]), 0),
            (esc(row["op"]), 0),
            (fmt_shape(row["shape"]), 0),
            (count(row["params"]), 1),
            (count(row["macs"]), 1),
            (rf_text(row["rf"]), 1),
            ("" if row["line"] is None else str(row["line"]), 1),
        )
        rows.append(
            "<tr>"
            + "".join(
                f'<td style="text-align:{"right" if right else "left"}">{text}</td>'
                for text, right in cells
            )
            + "</tr>"
        )
    sums = "".join(
        f'<tr><th style="text-align:left">{label}</th><td style="text-align:left">'
        f"{esc(value)}</td></tr>"
        for label, value in totals(net)
    )
    return (
        f'<div class="cnnc-table"><p><b>{esc(signature(net))}</b></p>'
        '<div style="max-height:420px;overflow:auto">'
        f'<table class="cnnc-layers"><thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table></div>"
        f'<table class="cnnc-totals">{sums}</table></div>'
    )


def mimebundle(net: Network, include=None, exclude=None) -> dict[str, str]:
    """The drawing (``image/svg+xml``), the drawing and the table (``text/html``: the form
    notebooks show) and one line (``text/plain``)."""
    picture = svg(net)
    if picture is None:
        body = f'<p style="color:#b71c1c">{html.escape(NO_DOT)}</p>'
    else:
        body = f'<div style="max-height:640px;overflow:auto">{picture}</div>'
    bundle = {"text/plain": repr(net), "text/html": body + html_table(net)}
    if picture is not None:
        bundle["image/svg+xml"] = picture
    if include:
        bundle = {k: v for k, v in bundle.items() if k in include}
    if exclude:
        bundle = {k: v for k, v in bundle.items() if k not in exclude}
    return bundle
