"""The CUDA backward kernels under Numba's simulator, against ``torch.autograd``.

Run by tests/test_cuda.py in a subprocess with NUMBA_ENABLE_CUDASIM=1 and CNNC_CUDA_TILE=4.
Every op's registry example in training mode (evaluation mode where the training plan
differs: batch norm, dropout, droppath), at batch 2; then geometries the examples miss
(strides, dilation, groups, padding modes, ties). The simulator runs each thread in Python,
so shapes stay tiny: the 64-channel convolution examples and every op in evaluation mode
are under ``slow``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from test_gradients import compare, example  # noqa: E402

import cnnc  # noqa: E402
import torch_reference  # noqa: E402
from cnnc.compiler.ops import OPS  # noqa: E402

pytestmark = pytest.mark.skipif(
    os.environ.get("NUMBA_ENABLE_CUDASIM") != "1" and os.environ.get("CNNC_CUDA_GPU") != "1",
    reason="run through tests/test_cuda.py",
)

#: Ops whose training plan differs between training and evaluation mode.
MODAL = ("bn", "dropout", "droppath")
#: Examples with 64 output channels: about a minute each in the simulator, so under ``slow``;
#: test_geometry runs the same kernels on smaller channel counts (and harder geometry).
HEAVY = ("conv", "convt")


def check(torch, spec: str, train: bool = True, batch: int = 2, seed: int = 0, x=None):
    """``cnnc.grad`` on CUDA against autograd (tests/test_gradients.py's ``compare``)."""
    net = cnnc.load(spec)
    rng = np.random.default_rng(seed)
    if x is None:
        x = rng.standard_normal((batch, *net.inputs["x"].shape)).astype(np.float32)
    out = next(iter(net.outputs.values())).shape
    target = rng.standard_normal((x.shape[0], *out)).astype(np.float32)
    compare(torch, net, {"x": x}, target, "mse", train, seed, device="cuda")


def net(stage: str, shape: str) -> str:
    return f"network t(x: {shape}) {{\n  return x | {stage}\n}}\n"


@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=pytest.mark.slow) if n in HEAVY else n for n in sorted(OPS)]
)
def test_op_gradient_in_training(name, torch):
    check(torch, example(OPS[name]), train=True)


@pytest.mark.parametrize("name", MODAL)
def test_op_gradient_in_evaluation(name, torch):
    check(torch, example(OPS[name]), train=False)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(OPS))
def test_op_gradient_in_evaluation_every_op(name, torch):
    check(torch, example(OPS[name]), train=False, batch=3)


@pytest.mark.parametrize(
    "stage, shape",
    [
        ("conv(6, k=(3, 2), s=2, p=(1, 0), d=(1, 2), g=3) | leaky_relu(0.2)", "6x7x9"),
        ("conv(5, k=3, s=(1, 2), p=2, d=2)", "2x5x6"),
        ("dwconv(k=3, s=2, p=1, m=2) | relu6", "3x7x6"),
        ("convt(4, k=3, s=2, p=1, op=1, g=2) | tanh", "4x3x4"),
        ("convt(3, k=2, s=(1, 2), d=2)", "2x3x3"),
        ("maxpool(k=3, s=2, p=1, ceil=true)", "3x7x7"),
        ("maxpool(k=2, d=2)", "2x6x5"),
        ("avgpool(k=3, s=2, p=1, count_pad=false)", "3x7x6"),
        ("avgpool(k=2, ceil=true)", "2x5x5"),
        ("upsample(2)", "2x3x4"),
        ("resize(size=(2, 3), mode=bilinear)", "2x5x7"),
        ("pad((2, 1, 1, 3), mode=replicate)", "2x4x3"),
        ("pad((1, 1, 2, 0))", "2x3x4"),
        ("groupnorm(2) | gelu(approx=tanh)", "4x3x3"),
        ("gap | flatten | fc(5) | prelu | layernorm", "4x3x3"),
        ("prelu(shared=true) | mul(x | gap | conv(1, k=1) | sigmoid)", "3x3x4"),
        ("lrn(size=4, alpha=0.5, beta=0.9, k=1.5) | softmax", "5x2x3"),
        ("concat(x | slice(0, 2), x | shuffle(2)) | softplus", "4x2x3"),
    ],
)
def test_geometry(stage, shape, torch):
    check(torch, net(stage, shape))


def test_max_pooling_ties_go_to_the_first_maximum(torch):
    """Equal values in every window: PyTorch's CPU kernel sends each window's gradient to its
    first maximum in scan order, and so must the CUDA kernel."""
    x = np.zeros((2, 2, 4, 5), np.float32)
    x[:, :, ::2, 1::2] = 1.0
    check(torch, net("maxpool(k=3, s=1, p=1)", "2x4x5"), x=x)


def test_a_value_read_twice_sums_its_gradients(torch):
    check(torch, net("add(x) | mul(x) | relu | concat(x)", "2x3x3"))


SMALL = """network small(x: 2x6x6) {
  y = x | conv(4, k=3, p=1, bias=false) | bn | relu
  z = add(y, y | dwconv(k=3, p=1) | bn) | maxpool(k=2)
  return z | flatten | dropout(0.25) | fc(3)
}"""


def test_a_small_network_trains_on_the_logits_and_repeats_bit_for_bit(torch):
    """Cross-entropy through a residual, batch norm, pooling and dropout; a second run gives
    the same bits (no atomics: every element is one thread's fixed-order sum)."""
    network = cnnc.load(SMALL)
    rng = np.random.default_rng(4)
    x = rng.standard_normal((3, 2, 6, 6)).astype(np.float32)
    target = rng.integers(0, 3, 3)
    grads = compare(torch, network, {"x": x}, target, "cross_entropy", seed=5, device="cuda")
    weights = torch_reference.random_weights(network, 1)
    _, again = cnnc.grad(network, x, target, weights, seed=5, device="cuda")
    for key, value in grads.items():
        assert np.array_equal(value, again[key]), key


#: Whole spec networks small enough for the simulator (digits: about two minutes on a 2-core
#: machine, LeNet-5 about seven); the larger specs need a real GPU (benchmarks/gpu_check.py).
SPEC_NETWORKS = ["digits.cnn", "lenet5.cnn"]


@pytest.mark.slow
@pytest.mark.parametrize("file", SPEC_NETWORKS)
def test_a_spec_network_matches_autograd(torch, file):
    """A spec file's network end to end on CUDA, in the 2-norm per tensor as on the CPU
    (tests/test_spec_gradients.py)."""
    from conftest import SPECS

    network = cnnc.load(SPECS / file)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, *network.inputs["x"].shape)).astype(np.float32)
    target = rng.integers(0, next(iter(network.outputs.values())).shape[0], 2)
    compare(torch, network, {"x": x}, target, "cross_entropy", device="cuda", l2=True)
