"""Gradients of pooling and data-movement ops against ``torch.autograd`` beyond their registry
examples: padding, dilation, ceil mode, divisors, ties, every resampling and padding mode,
vectors and reference tensors."""

from __future__ import annotations

import numpy as np
import pytest
from test_gradients import compare

import cnnc

CASES = [
    ("9x12x11", "maxpool(k=3, s=2, p=1)"),
    ("5x7x9", "maxpool(k=3, s=2, ceil=true)"),
    ("4x9x8", "maxpool(k=(2, 3), s=(1, 2), p=(1, 1), d=(2, 1))"),
    ("3x10x9", "maxpool(k=3, s=3, p=1, d=2, ceil=true)"),
    ("5x9x8", "avgpool(k=3, s=2, p=1, count_pad=false)"),
    ("5x9x8", "avgpool(k=3, s=2, p=1, ceil=true)"),
    ("3x8x10", "avgpool(k=(2, 3), s=(3, 1), p=(1, 1), ceil=true, count_pad=false)"),
    ("4x7x10", "adaptive_avgpool((3, 4))"),
    ("4x3x4", "adaptive_avgpool((5, 7))"),
    ("20x6x5", "gmp"),
    ("3x4x5", "upsample(2)"),
    ("3x4x5", "upsample((3, 2), mode=bilinear)"),
    ("3x7x9", "resize(size=(5, 13), mode=nearest)"),
    ("3x7x9", "resize(size=(3, 4))"),
    ("3x7x9", "resize(size=(11, 6))"),
    ("4x6x7", "resize(x | maxpool(k=2), mode=nearest)"),
    ("6", "fc(4) | concat(x, x | relu)"),
    ("3x4x5", "concat(x | relu, x)"),
    ("6x9x11", "crop(x | maxpool(k=3, s=2))"),
    ("3x5x6", "pad((2, 0, 1, 3))"),
    ("3x5x6", "pad((4, 1, 0, 6), mode=replicate)"),
    ("3x5x6", "pad((4, 1, 5, 2), mode=reflect)"),
    ("10", "slice(2, 5)"),
    ("12x3x2", "shuffle(4)"),
]


@pytest.mark.parametrize("shape, line", CASES)
def test_gradient_matches_autograd(torch, shape, line):
    net = cnnc.load(f"network t(x: {shape}) {{ return x | {line} }}")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, *net.inputs["x"].shape)).astype(np.float32)
    out = next(iter(net.outputs.values())).shape
    target = rng.standard_normal((2, *out)).astype(np.float32)
    compare(torch, net, {"x": x}, target, "mse")


@pytest.mark.parametrize(
    "line",
    ["maxpool(k=3, s=1, p=1)", "maxpool(k=2, s=1, d=2)", "maxpool(k=3, s=2, ceil=true)", "gmp"],
)
def test_ties_split_as_pytorch_does(torch, line):
    """Inputs of few distinct values: max pooling's gradient goes to the first maximum of
    each window (PyTorch's CPU kernel), global max pooling's is shared (``torch.amax``)."""
    net = cnnc.load(f"network t(x: 3x7x8) {{ return x | {line} }}")
    rng = np.random.default_rng(1)
    x = rng.integers(0, 3, (2, 3, 7, 8)).astype(np.float32)
    out = next(iter(net.outputs.values())).shape
    target = rng.standard_normal((2, *out)).astype(np.float32)
    compare(torch, net, {"x": x}, target, "mse")
