"""Whole library networks against the same network in PyTorch with the same weights."""

from __future__ import annotations

import numpy as np
import pytest

import cnnc
import torch_reference
from conftest import SPECS

NETWORKS = [
    ("lenet5.cnn", "lenet5", 4),
    ("alexnet.cnn", "alexnet_paper", 1),
    ("alexnet.cnn", "alexnet", 1),
    ("vgg.cnn", "vgg_a_lrn", 1),
    ("resnet.cnn", "resnet18", 2),
    ("resnet.cnn", "resnet50", 1),
    ("googlenet.cnn", "googlenet_paper", 1),
    ("googlenet.cnn", "googlenet", 1),
    ("mobilenet.cnn", "mobilenet_v1", 1),
    ("unet.cnn", "unet", 1),
    ("multiscale_seg.cnn", "multiscale_seg", 1),
    ("superres.cnn", "srcnn", 2),
    ("superres.cnn", "vdsr", 2),
    ("atrous.cnn", "context_module", 1),
    ("atrous.cnn", "aspp_head", 1),
]


@pytest.mark.parametrize("file, name, batch", NETWORKS, ids=[n[1] for n in NETWORKS])
def test_network_matches_torch(torch, file, name, batch):
    net = cnnc.load(SPECS / file, network=name)
    weights = torch_reference.random_weights(net, seed=1)
    rng = np.random.default_rng(2)
    inputs = {
        n: rng.standard_normal((batch, *layer.shape)).astype(np.float32)
        for n, layer in net.inputs.items()
    }
    want = torch_reference.forward(torch, net, weights, inputs)
    got = cnnc.run(net, inputs, weights)
    for key in want:
        assert got[key].shape == want[key].shape
        scale = max(float(np.abs(want[key]).max()), 1e-6)
        assert float(np.abs(got[key] - want[key]).max()) / scale < 1e-4, key
