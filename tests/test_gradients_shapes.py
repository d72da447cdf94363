"""Gradients of the products, PReLU, softmax and the normalisations on the shapes the
registry's one example per op leaves out: several operands and both kinds of broadcast gate,
a shared slope, vectors, windows wider than the channels, one group and one channel a group."""

from __future__ import annotations

import numpy as np
import pytest
from test_gradients import compare

import cnnc


def chain(stage: str, shape: str = "6x5x7") -> str:
    return f"network t(x: {shape}) {{\n  return x | {stage}\n}}\n"


def run(torch, spec: str, seed: int = 0):
    net = cnnc.load(spec)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((3, *net.inputs["x"].shape)).astype(np.float32)
    targets = {
        name: rng.standard_normal((3, *layer.shape)).astype(np.float32)
        for name, layer in net.outputs.items()
    }
    return compare(torch, net, {"x": x}, targets, "mse", train=True)


GATES = """network t(x: 6x5x7) {
    gate = x | gap | sigmoid
    one = x | gap | conv(1, k=1) | sigmoid
    y = x | tanh
    v = x | gap | flatten | fc(4)
    return mul(x, gate, one, y) | flatten, mul(gate, one) | flatten, mul(v, v | sigmoid), mul(y, y)
}
"""


def test_products_of_several_operands_and_gates(torch):
    """Two full-size operands and two gates (Cx1x1 and 1x1x1) at once; a gate times a
    smaller gate; vectors; one tensor twice."""
    grads = run(torch, GATES)
    assert np.abs(grads["x"]).max() > 0


@pytest.mark.parametrize(
    "stage, shape",
    [
        ("prelu(shared=true)", "6x5x7"),
        ("gap | flatten | fc(5) | prelu", "6x5x7"),
        ("gap | flatten | fc(5) | layernorm | fc(3)", "6x5x7"),
        ("gap | flatten | fc(5) | softmax | fc(3)", "6x5x7"),
        ("softmax | conv(2, k=1)", "6x5x7"),
        ("lrn(size=4, alpha=0.5, beta=0.75)", "6x5x7"),
        ("lrn(size=9, alpha=0.8, beta=0.6, k=1.5)", "6x3x4"),
        ("groupnorm(1)", "6x5x7"),
        ("groupnorm(6)", "6x5x7"),
        ("layernorm(eps=0.01)", "6x5x7"),
    ],
)
def test_shapes_the_examples_leave_out(torch, stage, shape):
    run(torch, chain(stage, shape))
