"""Checking `--explain`'s formulas: each one's arithmetic, evaluated exactly, is its value, and
the values are the layer's row (shape, parameters, MACs, receptive field)."""

from __future__ import annotations

import ast
import math
from fractions import Fraction
from functools import cache

from cnnc.compiler.explain import formulas

FUNCTIONS = {"floor": math.floor, "ceil": math.ceil, "max": max, "min": min}


class _Exact(ast.NodeTransformer):
    """Every integer literal becomes a Fraction, so that 3/2 is exact and floor exact."""

    def visit_Constant(self, node):
        if isinstance(node.value, int) and not isinstance(node.value, bool):
            call = ast.Call(ast.Name("Fraction", ast.Load()), [node], [])
            return ast.copy_location(call, node)
        return node


@cache  # the spec library repeats most formulas
def evaluate(arithmetic: str):
    tree = ast.parse(arithmetic, mode="eval")
    for node in ast.walk(tree):
        allowed = (
            ast.Expression,
            ast.BinOp,
            ast.UnaryOp,
            ast.Add,
            ast.Sub,
            ast.Mult,
            ast.Div,
            ast.USub,
            ast.Constant,
            ast.Call,
            ast.Name,
            ast.Load,
            ast.Tuple,
        )
        assert isinstance(node, allowed), f"{arithmetic!r}: {type(node).__name__} is not arithmetic"
        if isinstance(node, ast.Name):
            assert node.id in FUNCTIONS, f"{arithmetic!r}: unknown name {node.id}"
    tree = ast.fix_missing_locations(_Exact().visit(tree))
    return eval(compile(tree, "<arithmetic>", "eval"), {"Fraction": Fraction, **FUNCTIONS})


def check_explained(layer) -> dict:
    """Assert that ``layer``'s explanation computes its row; return the formulas."""
    parts = formulas(layer)
    where = f"{layer.name} ({layer.label or layer.op})"
    for section, fs in parts.items():
        for f in fs:
            assert f.rule and f.arithmetic, f"{where}: {section} {f.quantity} says nothing"
            got = evaluate(f.arithmetic)
            assert got == f.value, f"{where}: {f.arithmetic} = {got}, not {f.value}"
    shape = layer.shape
    covered = set()
    for f in parts["output"]:
        values = f.value if isinstance(f.value, tuple) else (f.value,) * len(f.axes)
        for axis, v in zip(f.axes, values):
            assert shape[axis] == v, f"{where}: output dim {axis} is {shape[axis]}, not {v}"
            covered.add(axis)
    assert covered == set(range(len(shape))), f"{where}: output dims {covered} explained"
    params = {f.quantity: f.value for f in parts["params"]}
    assert sum(params.values()) == layer.params, f"{where}: params {params}"
    assert {k for k, v in params.items() if v} == set(layer.weights), where
    assert [f.value for f in parts["macs"]] == [layer.macs], f"{where}: MACs"
    if layer.rf is not None:
        size, jump = {}, {}
        for f in parts["rf"]:
            target = jump if f.quantity.startswith("j") else size
            for axis in f.axes:
                target[axis] = f.value
        assert size == dict(enumerate(layer.rf.size)), f"{where}: r {size} {layer.rf}"
        assert jump == dict(enumerate(layer.rf.jump)), f"{where}: j {jump} {layer.rf}"
    return parts
