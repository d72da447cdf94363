"""Writing the imported layers as a ``.cnn`` spec a person would have written: one statement
per chain of layers, names taken from the ONNX graph, arguments that differ from their
defaults only."""

from __future__ import annotations

import re

import numpy as np

from ..compiler import OPS
from .onnx_graph import Node, consumers

RESERVED = {
    "network",
    "block",
    "import",
    "return",
    "true",
    "false",
    "none",
    "same",
    "valid",
    "nearest",
    "bilinear",
    "tanh",
    "zeros",
    "reflect",
    "replicate",
}


def identifier(raw: str, fallback: str) -> str:
    """A short, valid ``.cnn`` name from an ONNX name such as ``/layer1/layer1.0/conv1/Conv``."""
    parts = [p for p in re.split(r"[/:]", raw) if p]
    if len(parts) > 1 and parts[-1][:1].isupper() and re.fullmatch(r"[A-Za-z]+(_\d+)?", parts[-1]):
        parts = parts[:-1]  # torch's trailing op type
    kept = [
        p for i, p in enumerate(parts) if not (i + 1 < len(parts) and parts[i + 1].startswith(p))
    ]
    name = re.sub(r"[^A-Za-z0-9_]+", "_", "_".join(kept)).strip("_")
    name = re.sub(r"_+", "_", name)
    if not name:
        name = fallback
    if name[0].isdigit():
        name = f"{fallback}_{name}"
    if name in RESERVED or name in OPS:
        name += "_"
    return name[:48].rstrip("_") or fallback


def _fmt(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return str(np.float32(v))  # the shortest text that reads back as the same float32
    if isinstance(v, tuple):
        return "(" + ", ".join(_fmt(x) for x in v) + ")"
    return str(v)


def _same(value, default) -> bool:
    if isinstance(value, float) and isinstance(default, float):
        return np.float32(value) == np.float32(default)
    return value == default or value == (default,) * 2


def _call(n: Node, tensors: list[str]) -> str:
    """``op(tensors, first required argument, key=value ...)``; bare when nothing follows."""
    from ..compiler.ops.base import REQUIRED

    args = list(tensors)
    for i, spec in enumerate(OPS[n.op].args):
        value = n.args.get(spec.name, spec.default)
        if _same(value, spec.default):
            continue
        value = _fmt(n.args[spec.name])
        first_required = i == 0 and spec.default is REQUIRED
        args.append(value if first_required else f"{spec.name}={value}")
    return f"{n.op}({', '.join(args)})" if args else n.op


def _telling_name(origin) -> str:
    """The node's name, else its weight's (Caffe2 names nodes ``n12`` and tensors ``r12``
    but weights ``fire2/squeeze1x1_w_0``), else its output's."""
    _, node_name, output, weight = (*origin, "")[:4]
    weight = re.sub(r"(_w_0|_w|\.weight|_weight|/W)$", "", weight)
    for name in (node_name, weight, output):
        if name and not re.fullmatch(r"[A-Za-z]{0,3}_?\d*", name):
            return name
    return ""


def write_spec(inputs, outputs, nodes, net_name: str) -> tuple[str, list[Node]]:
    """The ``.cnn`` text (one statement per chain of layers) and the layers in source order."""
    users = consumers(nodes)
    out_ids = {id(n): name for name, n in outputs.items()}
    names: dict[int, str] = {}
    used: set[str] = set()

    def unique(base):
        name, i = base, 1
        while name in used:
            i += 1
            name = f"{base}_{i}"
        used.add(name)
        return name

    for name, node in inputs.items():
        names[id(node)] = unique(identifier(name, "x"))
    lines, order = [], []
    chains: list[list[Node]] = []
    for n in nodes:
        if n.op == "$input":
            continue
        prev = chains[-1][-1] if chains else None
        if (
            prev is not None
            and len(n.inputs) == 1
            and n.inputs[0] is prev
            and len(users.get(id(prev), [])) == 1
            and id(prev) not in out_ids
        ):
            chains[-1].append(n)
        else:
            chains.append([n])
    for chain in chains:
        last = chain[-1]
        base = out_ids.get(id(last)) or next(
            (t for t in (_telling_name(n.origin) for n in chain) if t),
            chain[0].origin[1] or chain[0].origin[2],
        )
        binding = unique(identifier(base, chain[0].op))
        head = chain[0]
        tensor_args = [names[id(i)] for i in head.inputs]
        if len(tensor_args) == 1:
            stages = [_call(head, [])] + [_call(n, []) for n in chain[1:]]
            expr = f"{tensor_args[0]} | " + " | ".join(stages)
        else:
            expr = " | ".join([_call(head, tensor_args)] + [_call(n, []) for n in chain[1:]])
        line = f"    {binding} = {expr}"
        if len(line) > 100:  # one stage a line, as a person would break it
            line = line.replace(" | ", "\n        | ")
        lines.append(line)
        order.extend(chain)
        for n in chain:
            names[id(n)] = binding
    sig = ", ".join(f"{names[id(n)]}: {'x'.join(map(str, n.shape))}" for n in inputs.values())
    returns = ", ".join(names[id(n)] for n in outputs.values())
    text = f"network {net_name}({sig}) {{\n" + "\n".join(lines) + f"\n    return {returns}\n}}\n"
    return text, order
