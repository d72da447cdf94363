"""onnx's own backend test runner against ``cnnc.onnx_backend``: the node tests of the ONNX ops
cnnc translates (CPU) and, under -m slow, the model-zoo networks the onnx wheel ships.

A node test that needs what the language lacks (a tensor of rank 3, integer data, an
attribute with no ``.cnn`` equivalent) is skipped with the importer's message; every number
cnnc computes must match. Counts and exclusions: README, "ONNX".
"""

from __future__ import annotations

import os
import re
import unittest

import pytest

try:
    import onnx.backend.test
except ImportError:
    if os.environ.get("CNNC_REQUIRE_REFERENCES"):
        raise
    pytest.skip("onnx not installed", allow_module_level=True)

import cnnc.onnx_backend as backend

#: node tests of the ONNX ops the importer translates (by test name prefix)
NODE_TESTS = (
    "averagepool|maxpool|basic_conv|conv_with|convtranspose|batchnorm|gemm|matmul_2d|relu|"
    "sigmoid|tanh|leakyrelu|elu|softplus|hardsigmoid|hardswish|mish|gelu|prelu|clip|softmax|"
    "globalaveragepool|globalmaxpool|reduce_mean|flatten|reshape|transpose|concat|add|sum|mul|"
    "div|sub|dropout|identity|lrn|constant_pad|reflect_pad|edge_pad|resize|upsample|slice|split|"
    "instancenorm|layer_normalization|group_normalization|squeeze|shape|constantofshape|"
    "single_relu|MaxPool2d|AvgPool2d|Conv2d|BatchNorm2d|PReLU|Softmax|ReLU|ELU|LeakyReLU"
)

SELECTED = re.compile(rf"^test_({NODE_TESTS})\w*_cpu$")
LEFT_OUT = re.compile(
    r"(_expanded|_cuda|bvlc|densenet|inception|resnet50|shufflenet|squeezenet|vgg19|zfnet)"
)

node_tests = onnx.backend.test.BackendTest(backend, __name__)
node_tests.include(SELECTED.pattern)
node_tests.exclude(LEFT_OUT.pattern)
_cases = node_tests.test_cases  # a new set of classes on each access
for _case in _cases.values():  # drop the thousands of tests not selected
    for _name in [n for n in vars(_case) if n.startswith("test_")]:
        if not SELECTED.search(_name) or LEFT_OUT.search(_name):
            delattr(_case, _name)
globals().update(_cases)

LIGHT = [
    "bvlc_alexnet",
    "densenet121",
    "inception_v1",
    "inception_v2",
    "resnet50",
    "shufflenet",
    # constant 0.02 weights give 1000 equal logits of 6.8e9 (one float32 step is 512): the
    # softmax is 1/1000 only if every output channel rounds alike, which the micro-kernel
    # does (the same multiply-adds in the same order per channel); BLAS tiles did not
    "squeezenet",
    "vgg19",
    "zfnet512",
]


def _run_model_test(name, tmp_path, monkeypatch):
    monkeypatch.setenv("ONNX_HOME", str(tmp_path))  # where the runner writes its test data
    suite = onnx.backend.test.BackendTest(backend, __name__)
    suite.include(rf"^test_{name}_cpu$")
    loader = unittest.defaultTestLoader
    tests = [
        t
        for c in suite.test_cases.values()
        for t in loader.loadTestsFromTestCase(c)
        if t.id().endswith(f".test_{name}_cpu")
    ]
    assert len(tests) == 1
    result = unittest.TestResult()
    tests[0].run(result)
    assert result.testsRun == 1
    assert not result.skipped, result.skipped
    assert not result.failures and not result.errors, (result.failures + result.errors)[0][1]


@pytest.mark.parametrize("name", LIGHT)  # the nine together take about 16 s here
def test_light_models_through_the_backend_runner(name, tmp_path, monkeypatch):
    _run_model_test(name, tmp_path, monkeypatch)
