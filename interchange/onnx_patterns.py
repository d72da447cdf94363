"""Patterns that span several ONNX nodes, rewritten once the whole graph is translated:
SiLU, Mish, hardswish and GELU from their decompositions, and constant per-channel shifts (with
the constant scale before them) folded into the conv, fc or norm layer they follow."""

from __future__ import annotations

import math

import numpy as np

from .onnx_graph import Node, consumers, live, replace

FOLDABLE = {"conv", "dwconv", "fc", "bn", "groupnorm", "layernorm"}


def rewrite(nodes: list[Node], outputs: list[Node]) -> list[Node]:
    changed = True
    while changed:
        changed = False
        nodes = live(outputs, nodes)
        users = consumers(nodes)
        for n in nodes:
            new = _pattern(n, users)
            if new is not None:
                replace(nodes, n, new, outputs)
                if new not in nodes:
                    nodes.insert(nodes.index(n), new)
                changed = True
                break
    return live(outputs, nodes)


def _only_user(n, users):
    return len(users.get(id(n), [])) == 1


def _is_scalar_scale(n, value):
    return (
        n.op == "scale" and n.from_constant and np.allclose(n.weights["weight"], value, rtol=1e-5)
    )


def _pattern(n: Node, users) -> Node | None:
    # mul(x, sigmoid(x)) -> silu; mul(x, tanh(softplus(x))) -> mish; mul(x, hardsigmoid(x))
    if n.op == "mul" and len(n.inputs) == 2:
        a, b = n.inputs
        for x, y in ((a, b), (b, a)):
            if y.op == "sigmoid" and y.inputs[0] is x and _only_user(y, users):
                return _like(n, "silu", [x])
            if y.op == "hardsigmoid" and y.inputs[0] is x and _only_user(y, users):
                return _like(n, "hardswish", [x])
            if (
                y.op == "tanh"
                and y.inputs[0].op == "softplus"
                and y.inputs[0].inputs[0] is x
                and _only_user(y, users)
                and _only_user(y.inputs[0], users)
            ):
                return _like(n, "mish", [x])
            gelu = _gelu_input(y, x, users)
            if gelu is not None:  # x * (1 + erf(x / sqrt 2)), the 0.5 applied before or after
                half = x if _is_scalar_scale(x, 0.5) else None
                if half is None:
                    return _like(n, "$gelu2", [x])
                return _like(n, "gelu", [half.inputs[0]])
        return None
    if (
        n.op == "scale"
        and n.inputs[0].op == "$gelu2"
        and _is_scalar_scale(n, 0.5)
        and _only_user(n.inputs[0], users)
    ):
        return _like(n, "gelu", n.inputs[0].inputs)
    # a constant shift (no cnnc op of its own) folded into the layer before it, through a
    # constant scale if there is one (Caffe2's batch norm: BatchNormalization, Mul, Add)
    if n.op == "$bias":
        p = n.inputs[0]
        if p.op in FOLDABLE and _only_user(p, users):
            return _fold_affine(p, n)
        q = p.inputs[0] if p.op == "scale" and p.from_constant else None
        if q is not None and q.op in FOLDABLE and _only_user(p, users) and _only_user(q, users):
            return _fold_affine(_fold_affine(q, p), n)
    return None


def _gelu_input(y, x, users):
    """If ``y`` is ``1 + erf(s * x)`` with s = 1/sqrt(2), return x."""
    if not (y.op == "$bias" and np.allclose(y.weights["bias"], 1.0) and _only_user(y, users)):
        return None
    e = y.inputs[0]
    if e.op != "$erf" or not _only_user(e, users):
        return None
    s = e.inputs[0]
    if not _is_scalar_scale(s, 1 / math.sqrt(2)) or not _only_user(s, users):
        return None
    inner = s.inputs[0]
    if inner is x or (_is_scalar_scale(x, 0.5) and x.inputs[0] is inner):
        return inner
    return None


def _like(n, op, inputs, args=None):
    return Node(op, list(inputs), dict(args or {}), n.shape, n.origin)


def _fold_affine(p: Node, n: Node) -> Node:
    """``p`` followed by a constant per-channel scale (or shift), as one layer."""
    w = {k: v.astype(np.float32).copy() for k, v in p.weights.items()}
    args = dict(p.args)
    if n.op == "scale":
        k = n.weights["weight"].reshape(-1)
        if p.op == "bn":
            w["weight"] = w["weight"] * k
            w["bias"] = w["bias"] * k
        elif p.op in ("groupnorm", "layernorm"):
            w["weight"], w["bias"] = w["weight"] * k, w["bias"] * k
        else:
            w["weight"] = w["weight"] * k.reshape((-1,) + (1,) * (w["weight"].ndim - 1))
            if "bias" in w:
                w["bias"] = w["bias"] * k
    else:
        k = n.weights["bias"].reshape(-1)
        if "bias" not in w:
            w["bias"] = np.zeros(p.shape[0], np.float32)
            args.pop("bias", None)
        w["bias"] = w["bias"] + k
    return Node(p.op, list(p.inputs), args, p.shape, p.origin, w)
