"""The torchvision zoo in specs/: every network's costs equal torchvision's, and cnnc's outputs
equal torchvision's with the same (randomised) weights, mapped onto the spec by forward order.

Costs are checked for all 74 networks against tests/data/torchvision_costs.json (made by
``python tests/zoo.py``). Outputs: one network per family here; all of them with ``-m slow``.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

import cnnc
import zoo

TABLE = json.loads(zoo.COSTS.read_text())
NAMES = [name for _, name, _ in zoo.ZOO]

#: One network per family, cheap enough for CI.
FAMILIES = [
    "alexnet",
    "googlenet",
    "inception_v3",
    "squeezenet1_1",
    "vgg11_bn",
    "resnet18",
    "resnext50_32x4d",
    "densenet121",
    "mobilenet_v2",
    "mobilenet_v3_small",
    "mnasnet0_5",
    "shufflenet_v2_x0_5",
    "efficientnet_b0",
    "efficientnet_v2_s",
    "regnet_x_400mf",
    "regnet_y_400mf",
    "convnext_tiny",
    "lraspp_mobilenet_v3_large",
]
RTOL = 1e-4


def test_the_zoo_is_complete():
    assert len(NAMES) == len(set(NAMES)) == 74
    assert set(NAMES) == set(TABLE) and set(FAMILIES) <= set(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_costs_equal_torchvision(name):
    net = zoo.network_of(name)
    size = TABLE[name]["input"]
    assert net.input_shapes == {"x": (3, size, size)}
    assert (net.total_params, net.total_macs) == (TABLE[name]["params"], TABLE[name]["macs"])
    want = (21, size, size) if name in zoo.SEGMENTATION else (1000,)
    assert list(net.output_shapes.values()) == [want]


def _parity(name):
    net, weights, x, want = zoo.reference_outputs(name)
    got = cnnc.run(net, {"x": x}, weights)
    (out,) = got.values()
    assert out.shape == want.shape
    assert zoo.relative_error(out, want) < RTOL
    assert np.isfinite(out).all()


@pytest.mark.parametrize("name", FAMILIES)
def test_outputs_equal_torchvision(torchvision, name):
    _parity(name)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(set(NAMES) - set(FAMILIES)))
def test_outputs_equal_torchvision_everywhere(torchvision, name):
    _parity(name)
