"""The importer's intermediate graph: cnnc layers being recovered from an ONNX graph.

A :class:`Node` is one cnnc op (or a ``$pseudo`` op that a later pattern must absorb, such as
``$erf`` inside GELU's decomposition) with its arguments and weights. A :class:`View` is how an
ONNX tensor relates to a node: plainly, or through a layout the ONNX graph passes through on
its way to a cnnc op (NHWC between two Transposes, the grouped shapes of a channel shuffle or a
group norm).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(eq=False)
class Node:
    op: str
    inputs: list
    args: dict
    shape: tuple  # per sample, cnnc's (C, H, W) or (F,)
    origin: tuple  # (ONNX op type, node name, first output, weight input): names, errors
    weights: dict = field(default_factory=dict)
    from_constant: bool = False  # a scale/bias made from an ONNX constant (foldable)

    @property
    def pseudo(self) -> bool:
        return self.op.startswith("$")


@dataclass(eq=False)
class View:
    node: Node
    kind: str = "plain"  # plain, nhwc, grouped, grouped_t, gn_grouped
    groups: int = 0

    @property
    def shape(self) -> tuple:
        """The ONNX per-sample shape of this tensor."""
        s = self.node.shape
        if self.kind == "nhwc":
            return (s[1], s[2], s[0])
        if self.kind == "grouped":
            return (self.groups, s[0] // self.groups, *s[1:])
        if self.kind == "grouped_t":
            return (s[0] // self.groups, self.groups, *s[1:])
        if self.kind == "gn_grouped":
            return (self.groups, int(np.prod(s)) // self.groups)
        return s


def consumers(nodes: list[Node]) -> dict[int, list[Node]]:
    users: dict[int, list[Node]] = {id(n): [] for n in nodes}
    for n in nodes:
        for i in n.inputs:
            users.setdefault(id(i), []).append(n)
    return users


def live(outputs: list[Node], nodes: list[Node]) -> list[Node]:
    """The nodes the outputs depend on, in creation (topological) order."""
    keep, stack = set(), list(outputs)
    while stack:
        n = stack.pop()
        if id(n) in keep:
            continue
        keep.add(id(n))
        stack.extend(n.inputs)
    return [n for n in nodes if id(n) in keep]


def replace(nodes: list[Node], old: Node, new: Node, outputs: list[Node]):
    """Make every use of ``old`` a use of ``new``."""
    for n in nodes:
        n.inputs = [new if i is old else i for i in n.inputs]
    outputs[:] = [new if o is old else o for o in outputs]
