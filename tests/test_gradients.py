"""Gradients against ``torch.autograd``: every op of the registry on its example, in training
and evaluation mode, through the plain training plan; losses; bad targets."""

from __future__ import annotations

import numpy as np
import pytest

import cnnc
import torch_reference
from cnnc.compiler.ops import OPS
from cnnc.runtime.backprop import drop_masks
from cnnc.runtime.grad_plan import build_grad_plan

OP_NAMES = sorted(OPS)
RTOL = 1e-4
#: Whole networks against float64 autograd, per tensor in the 2-norm: the contract's bound.
NETWORK_RTOL = 1e-3
#: ... or, on a network where PyTorch's own float32 misses that bound, no further than this
#: many times PyTorch's worst tensor. Float32 rounding flips the few ReLUs whose inputs sit
#: within it of zero, a flipped ReLU changes its element's gradient whole, and which element
#: flips, in which layer, is chance: one ulp added to ResNeXt-50's input moves PyTorch's error
#: on one tensor from 3.1e-4 to 1.7e-3 and two ulps to 1.1e-4, VGG-19-bn's worst from 6.5e-4 to
#: 7.8e-3 (tests/test_zoo_gradients.py).
FLOAT32 = 2


def example(op) -> str:
    return f"network t(x: {op.example_input}) {{\n  return x | {op.example or op.name}\n}}\n"


def assert_grads_match(ours: dict, ref: dict, rtol: float = RTOL, atol: float = 1e-6, l2=False):
    """Each tensor within ``rtol`` of the reference's largest magnitude (plus ``atol`` for
    gradients that are zero in exact arithmetic, such as a bias before batch norm). With
    ``l2``, the error's norm against the reference's (a whole network: float32 rounding
    flips the sign of a few pre-activations that sit within it of zero, and a flipped ReLU
    changes its element's gradient whole, which the largest-element error magnifies)."""
    assert set(ours) == set(ref), (sorted(ours), sorted(ref))
    for key, want in ref.items():
        got = ours[key]
        assert got.shape == want.shape, (key, got.shape, want.shape)
        if l2:
            diff = float(np.linalg.norm((got.astype(np.float64) - want).ravel()))
            scale = float(np.linalg.norm(want.ravel()))
            assert diff <= rtol * scale + atol * np.sqrt(want.size), (
                f"{key}: error norm {diff:.3g} against the gradient's {scale:.3g}"
            )
            continue
        err = float(np.abs(got - want).max()) if want.size else 0.0
        scale = float(np.abs(want).max()) if want.size else 0.0
        assert err <= rtol * scale + atol, f"{key}: max error {err:.3g} against scale {scale:.3g}"


def l2_error(got, want) -> float:
    """The 2-norm of ``got - want`` relative to ``want``'s, in float64."""
    diff = np.asarray(got, np.float64) - want
    return float(np.linalg.norm(diff.ravel()) / np.linalg.norm(np.asarray(want).ravel()))


def float32_error(ref32: dict, ref64: dict) -> dict:
    """PyTorch's float32 gradients' error against float64's, per tensor (nonzero ones)."""
    return {k: l2_error(ref32[k], w) for k, w in ref64.items() if np.abs(w).max()}


def assert_as_close_as_float32(
    label: str, ours: dict, ref32: dict, ref64: dict, float32_worst: float = 0.0
) -> None:
    """cnnc's gradients of a whole network (``ours``) within NETWORK_RTOL of float64
    autograd's (``ref64``) per tensor, or, where PyTorch's own float32 gradients (``ref32``,
    or another run of the same network whose worst error is ``float32_worst``) are further off
    than that somewhere, within FLOAT32 times PyTorch's worst tensor."""
    theirs = float32_error(ref32, ref64)
    worst = max(float32_worst, *theirs.values())
    bound = max(NETWORK_RTOL, FLOAT32 * worst)
    for key in theirs:
        err = l2_error(ours[key], ref64[key])
        assert err <= bound, (
            f"{label}: {key} off by {err:.2e} (PyTorch's float32: {theirs[key]:.2e} there, "
            f"{worst:.2e} at worst)"
        )


def compare(
    torch,
    net,
    inputs,
    targets,
    loss="mse",
    train=True,
    seed=0,
    weights=None,
    rtol=RTOL,
    l2=False,
    **kw,
):
    weights = weights if weights is not None else torch_reference.random_weights(net, 1)
    batch = next(iter(inputs.values())).shape[0]
    masks = drop_masks(build_grad_plan(net, train), batch, seed) if train else None
    value, grads = cnnc.grad(net, inputs, targets, weights, loss, train, seed, **kw)
    ref_value, ref = torch_reference.gradients(
        torch, net, weights, inputs, targets, loss, train, kw.get("label_smoothing", 0.0), masks
    )
    assert abs(value - ref_value) <= RTOL * max(1.0, abs(ref_value)), (value, ref_value)
    assert_grads_match(grads, ref, rtol, l2=l2)
    return grads


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("name", OP_NAMES)
def test_op_gradient_matches_autograd(name, train, torch):
    net = cnnc.load(example(OPS[name]))
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, *net.inputs["x"].shape)).astype(np.float32)
    out = next(iter(net.outputs.values())).shape
    target = rng.standard_normal((3, *out)).astype(np.float32)
    compare(torch, net, {"x": x}, target, "mse", train)


LENET = """network t(x: 1x12x12) {
  return x | conv(6, k=3) | bn | relu | maxpool(k=2) | conv(8, k=3, p=1) | relu | flatten
    | dropout(0.3) | fc(16) | relu | fc(4)
}"""


@pytest.mark.parametrize("loss", ["cross_entropy", "mse", "cosine"])
def test_losses_match_autograd(loss, torch):
    net = cnnc.load(LENET)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((5, 1, 12, 12)).astype(np.float32)
    if loss == "cross_entropy":
        target = rng.integers(0, 4, 5)
    else:
        target = rng.standard_normal((5, 4)).astype(np.float32)
    compare(torch, net, {"x": x}, target, loss, train=True, seed=3)


def test_label_smoothing_and_softmax_output_train_on_logits(torch):
    net = cnnc.load(LENET.replace("fc(4)\n", "fc(4) | softmax\n"))
    rng = np.random.default_rng(2)
    x = rng.standard_normal((4, 1, 12, 12)).astype(np.float32)
    target = rng.integers(0, 4, 4)
    compare(torch, net, {"x": x}, target, "cross_entropy", label_smoothing=0.1)


def test_per_pixel_cross_entropy(torch):
    net = cnnc.load(
        "network seg(x: 3x10x10) { return x | conv(8, k=3, p=1) | relu | conv(5, k=1) }"
    )
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 3, 10, 10)).astype(np.float32)
    target = rng.integers(0, 5, (2, 10, 10))
    compare(torch, net, {"x": x}, target, "cross_entropy")


def test_grad_changes_nothing_it_was_given():
    net = cnnc.load(LENET)
    weights = torch_reference.random_weights(net, 1)
    before = {k: v.copy() for k, v in weights.items()}
    x = np.ones((2, 1, 12, 12), np.float32)
    cnnc.grad(net, x, np.array([0, 1]), weights)
    for k, v in weights.items():
        assert np.array_equal(v, before[k]), k


@pytest.mark.parametrize(
    "targets, words",
    [
        (np.array([0, 4]), "class index 4, outside 0..3"),
        (np.array([-1, 0]), "class index -1"),
        (np.array([0.5, 1.0]), "fractional"),
        (np.array([0, 1, 2]), "shape (3,)"),
        (np.array([np.nan, 1.0]), "NaN"),
        (np.array(["a", "b"]), "not class indices"),
    ],
)
def test_bad_targets_are_clear_errors(targets, words):
    net = cnnc.load(LENET)
    x = np.ones((2, 1, 12, 12), np.float32)
    with pytest.raises(cnnc.DataError) as info:
        cnnc.grad(net, x, targets)
    assert words in str(info.value)


def test_bad_inputs_and_losses_are_clear_errors():
    net = cnnc.load(LENET)
    x = np.ones((2, 1, 12, 12), np.float32)
    with pytest.raises(cnnc.DataError, match="NaN"):
        cnnc.grad(net, np.full((2, 1, 12, 12), np.nan, np.float32), np.array([0, 1]))
    with pytest.raises(cnnc.DataError, match="unknown loss"):
        cnnc.grad(net, x, np.array([0, 1]), loss="hinge")
    with pytest.raises(cnnc.DataError, match="shape"):
        cnnc.grad(net, x, np.zeros((2, 3), np.float32), loss="mse")
    one = cnnc.load("network t(x: 4) { return x | fc(1) }")
    with pytest.raises(cnnc.DataError, match="at least two classes"):
        cnnc.grad(one, np.ones((2, 4), np.float32), np.array([0, 0]))


BRANCHES = """network t(x: 3x8x8) {
  a = x | bn | conv(4, k=3, p=1) | relu
  p = x | maxpool(k=3, s=1, p=1)
  q = x | scale | conv(3, k=1)
  b = add(p, q) | conv(4, k=1)
  return add(a, b) | gap | flatten | fc(3)
}"""


def test_training_skips_the_gradients_that_lead_only_to_the_inputs(monkeypatch):
    """Without the inputs' gradients (training), the weights' gradients are the same, and no
    step computes a gradient that only an input would receive: batch norm and layer scale
    on the input get none to write, the max pooling of the input is not run backwards."""
    from cnnc.runtime.backends import backend_for
    from cnnc.runtime.backprop import GradExecutor

    net = cnnc.load(BRANCHES)
    weights = torch_reference.random_weights(net, 1)
    x = np.random.default_rng(4).standard_normal((2, 3, 8, 8)).astype(np.float32)
    plan = build_grad_plan(net, True)
    backend = backend_for("cpu", "direct", tune=False)
    results, calls = [], []
    for inputs_too in (True, False):
        executor = GradExecutor(plan, backend, 2, input_grads=inputs_too)
        executor.load(weights)
        executor.forward({"x": x})
        executor.loss({"out": np.array([0, 2])}, "cross_entropy")
        for kernel, launch in dict(backend.grads).items():

            def spy(b, step, arrays, saved, gy, gxs, gws, launch=launch, mode=inputs_too):
                calls.append((mode, step.layers[0], [g is None for g in gxs]))
                return launch(b, step, arrays, saved, gy, gxs, gws)

            monkeypatch.setitem(backend.grads, kernel, spy)
        results.append(executor.backward())
        monkeypatch.undo()
    (with_inputs, input_grads), (without, none) = results
    assert set(input_grads) == {"x"} and not none
    assert set(with_inputs) == set(without)
    for key, value in with_inputs.items():
        assert np.array_equal(value, without[key]), key
    skipped = {layer: nones for inputs_too, layer, nones in calls if not inputs_too}
    assert "p.maxpool" not in skipped
    assert skipped["a.bn"] == [True] and skipped["q.scale"] == [True]
    assert skipped["b.add"] == [False, False]  # one operand leads to a weight: both written
    assert skipped["a.conv"] == [False]
