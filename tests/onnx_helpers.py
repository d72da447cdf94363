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


def calibrated_weights(net, seed: int, inputs: dict) -> dict:
    """cnnc's seeded weights (He, Xavier) with batch-norm statistics scaled to the data, as
    LSUV does: each bn's input for ``inputs`` is measured layer by layer (in PyTorch), and its
    running variance set to that input's mean square (times 0.5 to 1.5 per channel, its
    running mean 0.1 of the root mean square times a normal draw), so every normalised
    activation has a magnitude of ~1. With identity statistics, deep networks (EfficientNet-B7,
    V2) grow activations past 1e6 and become chaotic: cnnc, torch and ONNX Runtime disagree by
    ~100%, and no comparison can tell an export bug.

    One scale per layer, not per channel: normalising each channel by its own spread would
    blow a channel that is small by cancellation up to size 1 with its rounding errors, and
    deep networks at small inputs then differ by 1e-3 between any two implementations."""
    from cnnc.runtime.weights import initialise

    torch = require("torch")
    weights = initialise(net, seed)
    rng = np.random.default_rng(seed)

    def measure(layer, xs):
        if layer.op != "bn":
            return
        square = float((xs[0].double() ** 2).mean()) or 1.0
        (c,) = weights[f"{layer.name}.running_var"].shape
        mean = 0.1 * np.sqrt(square) * rng.standard_normal(c)
        weights[f"{layer.name}.running_mean"] = mean.astype(np.float32)
        weights[f"{layer.name}.running_var"] = (square * rng.uniform(0.5, 1.5, c)).astype(
            np.float32
        )

    torch_reference.forward(torch, net, weights, inputs, before=measure)
    return weights


def export_and_compare(net, opset=17, batch=2, spread=1.0, seed=0, seeded=False):
    """Export, check fully, run in ORT against cnnc.run. The weights are random and
    non-trivial (biases, statistics): for single ops :func:`torch_reference.random_weights`;
    with ``seeded``, for whole networks, :func:`calibrated_weights` (random statistics grow a
    deep network's activations to thousands, where float32 alone differs by more than 1e-4
    between any two implementations, torch included)."""
    from cnnc.interchange.onnx_export import build_model

    inputs = random_inputs(net, batch, seed, spread)
    if seeded:
        weights = calibrated_weights(net, seed, inputs)
    else:
        weights = torch_reference.random_weights(net, seed)
    model = build_model(net, weights, opset)  # includes onnx.checker's full check
    want = cnnc.run(net, inputs, weights)
    assert_close(ort_run(model, inputs), want, net.name)
    return model, weights, inputs, want
