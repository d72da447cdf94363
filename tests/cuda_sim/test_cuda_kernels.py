"""CUDA kernels under Numba's simulator, compared with PyTorch (tests/torch_reference.py: the
same network and weights in torch's own functions), not with cnnc's CPU runtime: a bug that
lowering, packing or planning shares between the two backends must show.

Run by tests/test_cuda.py in a subprocess with NUMBA_ENABLE_CUDASIM=1 and CNNC_CUDA_TILE=4, so
that shapes of a few tiles exercise multi-block and boundary paths while staying fast.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import cnnc  # noqa: E402
import torch_reference  # noqa: E402
from cnnc.compiler.ops import OPS  # noqa: E402

# CNNC_CUDA_GPU=1 runs them on a real GPU instead (benchmarks/gpu_check.py).
pytestmark = pytest.mark.skipif(
    os.environ.get("NUMBA_ENABLE_CUDASIM") != "1" and os.environ.get("CNNC_CUDA_GPU") != "1",
    reason="run through tests/test_cuda.py",
)


RTOL = ATOL = 2e-4  # as tests/test_runtime_ops.py: float32 sums of a few hundred terms


def compare(torch, spec: str, batch: int = 2, spread: float = 1.0):
    net = cnnc.load(spec)
    weights = torch_reference.random_weights(net, 0)
    rng = np.random.default_rng(0)
    inputs = {
        n: (spread * rng.standard_normal((batch, *layer.shape))).astype(np.float32)
        for n, layer in net.inputs.items()
    }
    want = torch_reference.forward(torch, net, weights, inputs)
    assert want
    for optimize in (True, False):
        got = cnnc.run(net, inputs, weights, device="cuda", optimize=optimize)
        assert set(got) == set(want)
        for name in want:
            assert got[name].shape == want[name].shape
            np.testing.assert_allclose(
                got[name], want[name], rtol=RTOL, atol=ATOL, err_msg=f"{name} optimize={optimize}"
            )


def net(stage: str, shape: str) -> str:
    return f"network t(x: {shape}) {{\n  return x | {stage}\n}}\n"


def test_tile_is_patched_small():
    from cnnc.runtime.backends.cuda import launch

    assert launch.TILE == 4 and launch.BM == 8


@pytest.mark.parametrize(
    "stage, shape",
    [
        ("conv(17, k=3, p=1) | bn | relu", "5x5x5"),  # 25 pixels, 17 channels, K=45
        ("conv(6, k=(3, 2), s=2, p=(1, 0), d=(1, 2), g=3) | leaky_relu(0.2)", "6x7x9"),
        ("conv(9, k=1) | sigmoid", "10x3x4"),
        ("dwconv(k=3, s=2, p=1, m=2) | relu6", "3x7x6"),
        ("convt(5, k=3, s=2, p=1, op=1) | tanh", "4x3x4"),
        ("convt(4, k=2, s=2, g=2)", "6x3x3"),
        ("maxpool(k=3, s=2, p=1, ceil=true)", "3x7x7"),
        ("maxpool(k=2, d=2)", "2x6x5"),
        ("avgpool(k=3, s=2, p=1, count_pad=false)", "3x7x6"),
        ("avgpool(k=2, ceil=true)", "2x5x5"),
        ("gap | flatten | fc(19) | relu", "4x3x3"),
        ("gmp | flatten", "4x3x3"),
        ("flatten | fc(9, bias=false) | bn", "3x4x5"),
        ("softmax", "5x3x3"),
        ("lrn(size=3, k=2)", "6x2x3"),
        ("upsample(2)", "3x3x4"),
        ("upsample((3, 2), mode=bilinear)", "2x3x4"),
        ("bn | tanh", "4x3x3"),
        ("conv(6, k=1) | hardswish | mul(x | conv(6, k=1) | gap | hardsigmoid)", "6x3x4"),
        ("conv(8, k=3, p=1) | layernorm | gelu(approx=tanh) | scale(0.5)", "4x3x3"),
        ("resize(x | maxpool(k=2), mode=nearest) | groupnorm(2) | silu", "4x5x7"),
    ],
)
def test_op(torch, stage, shape):
    compare(torch, net(stage, shape))


@pytest.mark.parametrize("name", sorted(OPS))
def test_every_registered_op(torch, name):
    """Each op of the registry on its example (values spread to reach every branch)."""
    op = OPS[name]
    compare(torch, net(op.example or name, op.example_input), spread=3.0)


def test_merges_crop_and_residual_fusion(torch):
    compare(
        torch,
        """
block res(x, c) {
    y = x | conv(c, k=3, p=1, bias=false) | bn | relu | conv(c, k=3, p=1) | bn
    return add(y, x) | relu
}
network t(x: 4x6x6) {
    a = x | res(4)
    b = concat(a, x | conv(3, k=1)) | conv(5, k=1)
    c = crop(b, x | maxpool(k=2))
    return c, add(a, x, a)
}
""",
    )


def test_squeeze_excitation_gate_folded_into_the_projection(torch):
    """plan._fold_gate: the SE multiply becomes the 1x1 projection's second input (a gate per
    channel, and one shared by all channels), with the residual add after it."""
    compare(
        torch,
        """
network t(x: 6x5x5) {
    y = x | conv(10, k=1) | silu
    g = y | gap | conv(3, k=1) | silu | conv(10, k=1) | sigmoid
    z = mul(y, g) | conv(6, k=1) | bn
    s = y | gap | conv(1, k=1) | sigmoid
    return add(z, x), mul(y, s) | conv(4, k=1, bias=false) | relu
}
""",
    )


def test_small_lenet_like_network(torch):
    """A LeNet-shaped network on a 10x10 input (full LeNet takes minutes in the simulator)."""
    compare(
        torch,
        """
network small(x: 1x10x10) {
    c1 = x | conv(4, k=3) | tanh | avgpool(k=2)
    c2 = c1 | conv(6, k=3) | tanh
    return c2 | flatten | fc(12) | tanh | fc(5) | softmax
}
""",
        batch=2,
    )
