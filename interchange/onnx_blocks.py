"""Repeated structures of an imported graph folded into ``block``s, as a person writes them.

A *segment* is the stretch of layers between two tensors that each carry everything alive at
their point of the graph (a residual unit from its input to its ``add``, say): it starts at a
single tensor and ends at a single tensor. Segments of two layers or more with the same ops,
wiring and arguments, up to integer arguments (channel counts, strides) that become the block's
parameters, are written once as a ``block`` and called once per occurrence.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from ..compiler import OPS
from .onnx_graph import Node

#: occurrences that differ in more arguments than this (channel counts, others) are different
#: blocks: a person names an Inception module's six widths, not six widths and five strides
MAX_CHANNEL_PARAMS, MAX_OTHER_PARAMS = 8, 2


@dataclass
class Block:
    """One block definition: a template occurrence and the parameters that vary."""

    name: str
    entry: Node  # the template's input tensor
    nodes: list[Node]  # the template's layers, in graph order
    params: dict[tuple[int, str], str]  # (layer index, argument) -> parameter name
    occurrences: list = field(default_factory=list)  # (entry, layers) of each call


def _segments(inputs, nodes, outputs) -> list[tuple[Node, list[Node]]]:
    """(entry, layers) for each stretch between two single-tensor cuts of the graph: a cut
    after layer ``i`` when no earlier tensor is used after ``i``."""
    nodes = [n for n in nodes if n.op != "$input"]
    position = {id(n): i for i, n in enumerate(nodes)}
    last_use = {id(n): position.get(id(n), -1) for n in [*inputs, *nodes]}
    for n in nodes:
        for i in n.inputs:
            last_use[id(i)] = max(last_use[id(i)], position[id(n)])
    out_ids = {id(o) for o in outputs}
    segments, start = [], 0
    entry = inputs[0] if len(inputs) == 1 else None
    reach = max((last_use[id(n)] for n in inputs), default=-1)
    for i, n in enumerate(nodes):
        if reach <= i:
            body = nodes[start : i + 1]
            if entry is not None and not any(id(b) in out_ids for b in body[:-1]):
                if segments and len(body) == 1 and _absorbs(segments[-1], n, out_ids):
                    segments[-1][1].append(n)  # a unit's closing activation is part of it
                else:
                    segments.append((entry, body))
            entry, start = n, i + 1
        reach = max(reach, last_use[id(n)])
    return segments


def _absorbs(segment, n: Node, out_ids) -> bool:
    """Whether a unit of several layers takes ``n``, the activation right after it."""
    body = segment[1]
    return (
        len(body) >= 2
        and id(body[-1]) not in out_ids
        and n.inputs == [body[-1]]
        and not n.weights
        and n.shape == body[-1].shape
        and n.op in OPS
        and not OPS[n.op].args
    )


def _scalar(value):
    """An argument a parameter can stand for: an integer (a square pair counts as one)."""
    if isinstance(value, tuple) and len(value) == 2 and value[0] == value[1]:
        value = value[0]
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _args(n: Node) -> dict:
    """Every argument of a layer, defaults included."""
    return {spec.name: n.args.get(spec.name, spec.default) for spec in OPS[n.op].args}


def _shape_key(entry: Node, body: list[Node]):
    """Ops and wiring: equal for occurrences of one structure."""
    index = {id(n): k for k, n in enumerate(body)}
    return tuple((n.op, tuple(-1 if i is entry else index[id(i)] for i in n.inputs)) for n in body)


def _varying(occurrences) -> dict[tuple[int, str], tuple] | None:
    """(layer index, argument) -> values where the occurrences differ; None if one of them
    cannot become a parameter."""
    varying = {}
    for k, n in enumerate(occurrences[0][1]):
        for arg in _args(n):
            values = [_args(body[k])[arg] for _, body in occurrences]
            if all(v == values[0] for v in values):
                continue
            scalars = tuple(_scalar(v) for v in values)
            if any(s is None for s in scalars):
                return None
            varying[(k, arg)] = scalars
    return varying


def find_blocks(inputs: list[Node], nodes: list[Node], outputs: list[Node]) -> list[Block]:
    """Blocks for the structures that occur at least twice, in order of first occurrence."""
    groups: dict = {}
    for entry, body in _segments(inputs, nodes, outputs):
        if len(body) >= 2 and all(n.op in OPS for n in body):
            groups.setdefault(_shape_key(entry, body), []).append((entry, body))
    blocks = []
    for occurrences in groups.values():
        for part in _split(occurrences):
            if not _worth_it(part):
                continue
            varying = _varying(part)
            blocks.append(_block(part, varying))
    position = {id(n): i for i, n in enumerate(nodes)}
    blocks.sort(key=lambda b: position[id(b.nodes[0])])
    taken: dict[str, int] = {}
    # the most called gets the plain name; no digit at the end (cnnc numbers a statement's
    # repeated calls: residual1, residual2)
    for block in sorted(blocks, key=lambda b: -len(b.occurrences)):
        base = "residual" if any(n.op == "add" for n in block.nodes) else "unit"
        block.name = base + (f"_{_letters(taken[base])}" if base in taken else "")
        taken[base] = taken.get(base, 0) + 1
    return blocks


def _worth_it(occurrences) -> bool:
    """Whether calls make the spec shorter: each saves the layers of an occurrence but one,
    and the definition costs about as many as the block has, plus its frame."""
    size = len(occurrences[0][1])
    return len(occurrences) >= 2 and len(occurrences) * (size - 1) > size + 2


def _letters(k: int) -> str:
    """b, c, ..., z, ba, bb, ...: the k-th other name of a kind (k >= 1)."""
    out = ""
    while k:
        k, r = divmod(k, 26)
        out = chr(ord("a") + r) + out
    return out


def _split(occurrences):
    """One group if few arguments vary, else one per set of exact argument values."""
    varying = _varying(occurrences)
    if varying is not None:
        params = {values: arg == "out" for (_, arg), values in varying.items()}
        channels = sum(params.values())
        if channels <= MAX_CHANNEL_PARAMS and len(params) - channels <= MAX_OTHER_PARAMS:
            return [occurrences]
    exact: dict = {}
    for occ in occurrences:
        key = tuple(repr(sorted(_args(n).items())) for n in occ[1])
        exact.setdefault(key, []).append(occ)
    return list(exact.values())


def _block(occurrences, varying) -> Block:
    """Arguments that vary alike across the occurrences share one parameter: ``c`` for
    channel counts (``c1``, ``c2`` when several), the argument's own name otherwise."""
    first: dict[tuple, tuple[int, str]] = {}
    for key, values in varying.items():
        first.setdefault(values, key)
    body = occurrences[0][1]
    bases = {values: "c" if arg == "out" else arg for values, (k, arg) in first.items()}
    names, count = {}, {}
    for base in bases.values():
        count[base] = count.get(base, 0) + 1
    seen: dict[str, int] = {}
    for values, base in bases.items():
        seen[base] = seen.get(base, 0) + 1
        names[values] = base if count[base] == 1 else f"{base}{seen[base]}"
    params = {key: names[values] for key, values in varying.items()}
    return Block("", occurrences[0][0], body, params, occurrences)


def fold(inputs: list[Node], nodes: list[Node], outputs: list[Node]):
    """Replace each occurrence of a block by one call node: (nodes, outputs, blocks,
    expansion {id(call): the occurrence's layers, in the template's order})."""
    blocks = find_blocks(inputs, nodes, outputs)
    expansion, call_of, inside = {}, {}, set()
    for block in blocks:
        for entry, body in block.occurrences:
            values = {p: _scalar(_args(body[k])[arg]) for (k, arg), p in block.params.items()}
            call = Node(
                block.name,
                [entry],
                {"$call": _call_text(block, values)},
                body[-1].shape,
                ("block", _scope(body), "", ""),
            )
            expansion[id(call)] = body
            call_of[id(body[-1])] = call
            inside.update(id(n) for n in body)
    folded = [call_of.get(id(n), n) for n in nodes if id(n) not in inside or id(n) in call_of]
    for n in folded:
        n.inputs = [call_of.get(id(i), i) for i in n.inputs]
    return folded, [call_of.get(id(o), o) for o in outputs], blocks, expansion


def _call_text(block: Block, values: dict) -> str:
    args = ", ".join(str(v) for v in values.values())
    return f"{block.name}({args})" if args else block.name


def _scope(body: list[Node]) -> str:
    """The first part of the ONNX names the layers share (``layer1`` of torch's
    ``/layer1/layer1.0/conv1/Conv``): calls of one scope form one statement."""
    parts = [p for p in re.split(r"[/.]", body[0].origin[1] or "") if p]
    return parts[0] if parts and all(parts[0] in (n.origin[1] or "") for n in body) else ""
