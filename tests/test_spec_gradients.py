"""Gradients of the spec library's networks that the torchvision zoo does not hold, against
``torch.autograd`` through the same network built from PyTorch's functions
(tests/torch_reference.py), relative 1e-3 in the 2-norm per tensor (see assert_grads_match):
the small ones here, the large ones under ``-m slow``. Together with
tests/test_zoo_gradients.py, every spec file's networks are differentiated."""

from __future__ import annotations

import numpy as np
import pytest
from test_gradients import assert_as_close_as_float32, compare

import cnnc
import torch_reference
from conftest import SPECS

#: (spec file, network, --set values)
SMALL = [
    ("atrous.cnn", "context_module", {}),
    ("cifar_resnet.cnn", "cifar_resnet", {"n": 1}),
    ("digits.cnn", None, {}),
    ("lenet5.cnn", None, {}),
    ("superres.cnn", "srcnn", {}),
    ("googlenet.cnn", "inception_3a", {}),
    ("efficientnet.cnn", "mbconv_se", {}),
]
#: Held to 1e-3 against float64 autograd, or, where PyTorch's own float32 misses that, to twice
#: PyTorch's worst tensor (test_gradients.assert_as_close_as_float32): float32 rounding flips
#: ReLUs whose inputs sit within it of zero, and which ones is chance. Measured (cnnc, PyTorch's
#: float32; worst tensors against float64): the ASPP head 9.1e-4 and 7.9e-7, one element of
#: the rate-6 branch at +3.4e-7 in float64, -2.7e-7 in cnnc, +4.8e-7 in PyTorch (with two ulps
#: added to the input PyTorch flips one instead: 6.6e-4 and 6.9e-4); VDSR's 20 layers 1.1e-3
#: and 2.0e-3 (seed 1: 3.1e-3 both, the same flips). Before the micro-kernel summed long
#: convolutions in blocks (microkernel.SUM_BLOCK): 3.8e-3 and 3.4e-3. Under ``-m slow``.
ROUNDING_BOUND = [("atrous.cnn", "aspp_head", {}), ("superres.cnn", "vdsr", {})]
LARGE = [
    ("unet.cnn", None, {}),
    ("multiscale_seg.cnn", None, {}),
    ("segmentation.cnn", "fcn_resnet50", {}),
]


def _matches(torch, file, name, params, batch):
    net = cnnc.load(SPECS / file, network=name, params=params or None)
    rng = np.random.default_rng(0)
    inputs = {
        n: rng.standard_normal((batch, *layer.shape)).astype(np.float32)
        for n, layer in net.inputs.items()
    }
    targets = {
        n: rng.standard_normal((batch, *layer.shape)).astype(np.float32)
        for n, layer in net.outputs.items()
    }
    compare(torch, net, inputs, targets, "mse", train=True, rtol=1e-3, l2=True)  # a network


@pytest.mark.parametrize("file, name, params", SMALL, ids=[f"{f}:{n}" for f, n, _ in SMALL])
def test_spec_gradients_match_autograd(torch, file, name, params):
    _matches(torch, file, name, params, batch=2)


@pytest.mark.slow
@pytest.mark.parametrize("file, name, params", LARGE, ids=[f"{f}:{n}" for f, n, _ in LARGE])
def test_large_spec_gradients_match_autograd(torch, file, name, params):
    _matches(torch, file, name, params, batch=1)


@pytest.mark.slow
@pytest.mark.parametrize(
    "file, name, params", ROUNDING_BOUND, ids=[f"{f}:{n}" for f, n, _ in ROUNDING_BOUND]
)
def test_rounding_bound_spec_gradients_match_float64(torch, file, name, params):
    net = cnnc.load(SPECS / file, network=name, params=params or None)
    rng = np.random.default_rng(0)
    inputs = {
        n: rng.standard_normal((2, *v.shape)).astype(np.float32) for n, v in net.inputs.items()
    }
    targets = {
        n: rng.standard_normal((2, *v.shape)).astype(np.float32) for n, v in net.outputs.items()
    }
    weights = torch_reference.random_weights(net, 1)
    _, ours = cnnc.grad(net, inputs, targets, weights, "mse", True)
    _, ref32 = torch_reference.gradients(torch, net, weights, inputs, targets, "mse", True)
    wide = [{k: v.astype(np.float64) for k, v in d.items()} for d in (weights, inputs, targets)]
    _, ref64 = torch_reference.gradients(torch, net, *wide, "mse", True)
    assert_as_close_as_float32(name, ours, ref32, ref64)
