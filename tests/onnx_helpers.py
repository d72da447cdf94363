"""Helpers of the ONNX tests: export a network, run it in ONNX Runtime, compare with cnnc."""

from __future__ import annotations

import numpy as np

import cnnc
import torch_reference
from conftest import require

RTOL = 1e-4  # the contract's relative error
ATOL = 1e-5


def ort():
    return require("onnxruntime")


def onnx():
    return require("onnx")


def ort_run(model, inputs: dict) -> dict:
    """Run an ONNX model (proto or bytes) in ONNX Runtime on one thread."""
    rt = ort()
    options = rt.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    data = model if isinstance(model, bytes) else model.SerializeToString()
    session = rt.InferenceSession(data, options, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, inputs)))


def random_inputs(net, batch=2, seed=0, spread=1.0) -> dict:
    rng = np.random.default_rng(seed)
    return {
        n: (spread * rng.standard_normal((batch, *layer.shape))).astype(np.float32)
        for n, layer in net.inputs.items()
    }


def assert_close(got: dict, want: dict, what: str, rtol=RTOL):
    """Every output: same shape, then values within ``rtol`` of the largest magnitude."""
    assert set(got) == set(want), (sorted(got), sorted(want))
    for name in want:
        assert got[name].shape == want[name].shape, (what, name)
        scale = max(float(np.abs(want[name]).max()), 1e-6)
        err = float(np.abs(got[name] - want[name]).max())
        assert err <= rtol * scale + ATOL, f"{what}: output '{name}' differs by {err:.3g}"


def export_and_compare(net, opset=17, batch=2, spread=1.0, seed=0, seeded=False):
    """Export, check fully, run in ORT against cnnc.run. The weights are random and
    non-trivial (biases, statistics), or with ``seeded`` cnnc's own seeded initialisation
    (He, identity batch norm): whole random networks with non-trivial statistics grow
    activations to thousands, where float32 alone differs by more than 1e-4 between
    any two implementations (torch included)."""
    from cnnc.interchange.onnx_export import build_model
    from cnnc.runtime.weights import initialise

    weights = initialise(net, seed) if seeded else torch_reference.random_weights(net, seed)
    model = build_model(net, weights, opset)  # includes onnx.checker's full check
    inputs = random_inputs(net, batch, seed, spread)
    want = cnnc.run(net, inputs, weights)
    assert_close(ort_run(model, inputs), want, net.name)
    return model, weights, inputs, want
