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
    name = name[:48].rstrip("_") or fallback
    if name in RESERVED or name in OPS:  # a keyword would not parse, a word or op be hidden
        name += "_"
    return name


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


def _call(n: Node, tensors: list[str], params: dict | None = None) -> str:
    """``op(tensors, first required argument, key=value ...)``; bare when nothing follows.
    ``params`` names the block parameters that stand for some arguments; a block's call
    carries its own text."""
    from ..compiler.ops.base import REQUIRED

    if "$call" in n.args:
        return n.args["$call"]
    params = params or {}
    args = list(tensors)
    for i, spec in enumerate(OPS[n.op].args):
        value = n.args.get(spec.name, spec.default)
        if spec.name not in params and _same(value, spec.default):
            continue
        value = params.get(spec.name) or _fmt(n.args[spec.name])
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


def write_spec(inputs, outputs, nodes, net_name: str, blocks=()) -> tuple[str, list[Node]]:
    """The ``.cnn`` text (one statement per chain of layers, each block defined once before
    the network) and the layers in source order (block calls as they are)."""
    block_names = {b.name for b in blocks}  # a binding named like a block would hide it
    texts = [_block_text(b, block_names) for b in blocks]
    used = set(block_names)
    names: dict[int, str] = {}
    for name, node in inputs.items():
        names[id(node)] = _unique(used, identifier(name, "x"))
    lines, order = _statements(nodes, outputs, names, used)
    sig = ", ".join(f"{names[id(n)]}: {'x'.join(map(str, n.shape))}" for n in inputs.values())
    returns = ", ".join(names[id(n)] for n in outputs.values())
    texts.append(
        f"network {net_name}({sig}) {{\n" + "\n".join(lines) + f"\n    return {returns}\n}}\n"
    )
    return "\n".join(texts), order


def _block_text(block, block_names: set) -> str:
    """``block NAME(x, params) { ... }`` for one folded structure, named after its template's
    layers with their common stem left out."""
    params = list(dict.fromkeys(block.params.values()))
    used = {"x", *params, *block_names}
    names = {id(block.entry): "x"}
    index = {id(n): k for k, n in enumerate(block.nodes)}
    per_node = {
        id(n): {arg: p for (k, arg), p in block.params.items() if k == index[id(n)]}
        for n in block.nodes
    }
    stem = _stem(block.nodes)
    lines, _ = _statements(block.nodes, {}, names, used, per_node, stem)
    header = f"block {block.name}({', '.join(['x', *params])}) {{\n"
    return header + "\n".join(lines) + f"\n    return {names[id(block.nodes[-1])]}\n}}\n"


def _stem(nodes) -> str:
    """The longest common prefix of the layers' telling names, cut after a separator."""
    names = [_telling_name(n.origin) for n in nodes]
    stem = names[0]
    for name in names[1:]:
        while not name.startswith(stem):
            stem = stem[:-1]
    cut = max(stem.rfind(c) for c in "/._")
    return stem[: cut + 1] if cut >= 0 else ""


def _below(name: str, stem: str) -> str:
    """A layer's name inside its block: its ONNX name past the block's, unless only torch's
    op type (``Add``) is left."""
    name = name[len(stem) :] if name.startswith(stem) else name
    return "" if re.fullmatch(r"[A-Z][A-Za-z]*(_\d+)?", name) else name


def _scope(n: Node) -> str | None:
    """The scope of a block call (calls of one scope are one statement); None for a layer."""
    return n.origin[1] if n.origin[0] == "block" else None


def _unique(used: set, base: str) -> str:
    name, i = base, 1
    while name in used:
        i += 1
        name = f"{base}_{i}"
    used.add(name)
    return name


def _statements(nodes, outputs, names, used, per_node=None, stem=""):
    """One ``binding = chain`` line per chain of single-use layers; (lines, layers in order)."""
    users = consumers(nodes)
    out_ids = {id(n): name for name, n in outputs.items()}
    per_node = per_node or {}
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
            and _scope(n) == _scope(prev)
        ):
            chains[-1].append(n)
        else:
            chains.append([n])
    for chain in chains:
        last = chain[-1]
        telling = [_telling_name(n.origin) for n in chain]
        fallback = chain[0].origin[1] or chain[0].origin[2]
        if stem:  # in a block: the names below the block's own, else the op's
            telling = [_below(t, stem) for t in telling]
            fallback = f"{chain[0].op}_out"
        base = out_ids.get(id(last)) or next((t for t in telling if t), fallback)
        binding = _unique(used, identifier(base, chain[0].op))
        head = chain[0]
        stages = [_call(n, [], per_node.get(id(n))) for n in chain]
        tensor_args = [names[id(i)] for i in head.inputs]
        if len(tensor_args) == 1:
            expr = f"{tensor_args[0]} | " + " | ".join(stages)
        else:
            first = _call(head, tensor_args, per_node.get(id(head)))
            expr = " | ".join([first] + stages[1:])
        line = f"    {binding} = {expr}"
        if len(line) > 100:  # one stage a line, as a person would break it
            line = line.replace(" | ", "\n        | ")
        lines.append(line)
        order.extend(chain)
        for n in chain:
            names[id(n)] = binding
    return lines, order
