"""``cnnc check --explain LAYER``: the arithmetic behind a layer's row, numbers filled in.

The formulas come from each op's registry entry (``explain_*`` beside each rule, see
ops/formula.py); this module picks the layers a name or glob matches, adds where the layer is
written in the spec, and lays the formulas out as text or JSON.
"""

from __future__ import annotations

import re
from difflib import get_close_matches
from fnmatch import fnmatchcase
from typing import TYPE_CHECKING

from .diagnostics import UsageError, error
from .ops import OPS, fmt_shape
from .ops.formula import Formula, per_axis, same_shape, show

if TYPE_CHECKING:  # types only: network.py imports this module
    from .network import Layer, Network

SECTIONS = ("output", "params", "macs", "rf")
WIDTH = 100


def matching(net: Network, pattern: str) -> list[Layer]:
    """The layers (inputs included) named ``pattern``, or matching it as a glob, in order."""
    layers = [*net.inputs.values(), *net.layers]
    exact = [layer for layer in layers if layer.name == pattern]
    return exact or [layer for layer in layers if fnmatchcase(layer.name, pattern)]


def select(nets: list[Network], pattern: str) -> list[tuple[Network, list[Layer]]]:
    """The matches in each network; a usage error naming close names when there are none."""
    found = [(net, matching(net, pattern)) for net in nets]
    found = [(net, layers) for net, layers in found if layers]
    if not found and nets:
        names = [layer.name for net in nets for layer in (*net.inputs.values(), *net.layers)]
        close = get_close_matches(pattern, names, n=3, cutoff=0.5)
        raise UsageError(
            error(
                f"--explain '{pattern}': no layer of "
                + ", ".join(net.name for net in nets)
                + " has that name",
                hint=f"did you mean {' or '.join(repr(c) for c in close)}?"
                if close
                else "names are those of `cnnc check`'s first column; globs like 'layer1*' work",
            )
        )
    return found


def formulas(layer: Layer) -> dict[str, list[Formula]]:
    """The layer's formulas by section: output shape, parameters, MACs, receptive field."""
    if layer.op == "input":
        return {
            "output": [same_shape(layer.shape, "the network's signature")],
            "params": [],
            "macs": [Formula("MACs", "0", "0", 0, note="an input computes nothing")],
            "rf": per_axis("r", lambda i: "1", lambda i: "1", (1, 1), 0, "a pixel sees itself")
            + per_axis("j", lambda i: "1", lambda i: "1", (1, 1), 0),
        }
    op = OPS[layer.op]
    shapes = [i.shape for i in layer.inputs]
    rfs = [i.rf for i in layer.inputs]
    a = layer.args
    has_rf = layer.rf is not None and all(r is not None for r in rfs)
    return {
        "output": op.explain_shape(shapes, layer.shape, a),
        "params": op.explain_params(shapes, a),
        "macs": op.explain_macs(shapes, layer.shape, a),
        "rf": op.explain_rf(rfs, shapes, a, layer.rf) if has_rf else [],
    }


def source_lines(layer: Layer) -> list[dict]:
    """Where the layer is written: its own line, then each block call around it, innermost
    first (``file``, ``line``, ``text``, and ``block`` for a call)."""
    lines = []
    if layer.location:
        loc = layer.location
        lines.append({"file": loc.file, "line": loc.line, "text": _squeezed(loc.source_line)})
    for inst in reversed(layer.block_path):
        loc = inst.location
        if loc:
            lines.append(
                {
                    "file": loc.file,
                    "line": loc.line,
                    "text": _squeezed(loc.source_line),
                    "block": inst.describe(),
                }
            )
    return lines


def _squeezed(text: str) -> str:
    """A source line without its indentation and the runs of spaces that align columns."""
    return re.sub(r"\s{3,}", "  ", text.strip())


def _rf_text(layer: Layer) -> str:
    if layer.rf is None:
        return "-"
    (h, w), (jh, jw) = layer.rf.size, layer.rf.jump
    size = f"{h}" if h == w else f"{h}x{w}"
    jump = show(jh) if jh == jw else f"{show(jh)}x{show(jw)}"
    return f"{size}  (jump {jump})"


def _formula_lines(f: Formula, indent: str = "    ") -> list[str]:
    """One line; when too long, the rule, then ``= arithmetic = value`` under it, then the
    note."""
    line = indent + f.text()
    if len(line) <= WIDTH:
        return [line]
    text = f.text(note=False)
    head, _, rest = text.partition(" = ")
    rule, _, tail = rest.partition(" = ")
    pad = indent + " " * len(head)
    lines = [f"{indent}{text}"]
    if len(lines[0]) > WIDTH and tail:
        lines = [f"{indent}{head} = {rule}", f"{pad} = {tail}"]
    return lines + ([f"{pad}   ({f.note})"] if f.note else [])


def explain_text(net: Network, layer: Layer) -> str:
    """The lecture's working for one layer of ``net``."""
    parts = formulas(layer)
    out = [f"{layer.name}: {layer.label or layer.op}  ({net.name})"]
    for i, where in enumerate(source_lines(layer)):
        place = f"{where['file']}:{where['line']}"
        what = f"in block {where['block']}, called at {place}" if "block" in where else place
        out.append(f"  {'from' if i == 0 else '    '}  {what}: {where['text']}")
    if layer.inputs:
        ins = ", ".join(f"{i.name} {fmt_shape(i.shape)}" for i in layer.inputs)
        out.append(f"  input   {ins}")
    sections = (
        ("output", fmt_shape(layer.shape)),
        ("params", f"{layer.params:,}" + ("" if parts["params"] else "  (no learned weights)")),
        ("MACs", f"{layer.macs:,}"),
        ("RF", _rf_text(layer)),
    )
    for (title, total), key in zip(sections, SECTIONS):
        out.append(f"  {title:<7} {total}")
        for f in parts[key]:
            out.extend(_formula_lines(f))
    return "\n".join(out)


def explain_json(layer: Layer) -> dict:
    """The same as structured fields: the layer's row and source lines, and under
    ``formulas`` each section's formulas (``quantity``, ``rule``, ``arithmetic``, ``value``)."""
    data = {
        "name": layer.name,
        "op": layer.op,
        "label": layer.label or layer.op,
        "inputs": [{"name": i.name, "shape": list(i.shape)} for i in layer.inputs],
        "shape": list(layer.shape),
        "params": layer.params,
        "macs": layer.macs,
        "rf": list(layer.rf.size) if layer.rf else None,
        "source": source_lines(layer),
    }
    data["formulas"] = {key: [f.to_json() for f in fs] for key, fs in formulas(layer).items()}
    return data
