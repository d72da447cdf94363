"""The training step's arena (runtime/grad_layout.py): no two buffers whose lifetimes meet
share memory, the arena comes within a few percent of the most floats live at once, and the
gradients that go through it (a value read twice by one step, a softmax output under each
loss) match autograd."""

from __future__ import annotations

import numpy as np
import pytest
from test_gradients import BRANCHES, LENET, compare

import cnnc
from cnnc.runtime.backends.cpu import GRADS
from cnnc.runtime.grad_layout import ALIGN
from cnnc.runtime.grad_plan import build_grad_plan
from conftest import SPECS

NETWORKS = [
    (LENET, None),
    (BRANCHES, None),
    (str(SPECS / "resnet.cnn"), "resnet18"),
    (str(SPECS / "mobilenet.cnn"), "mobilenet_v2"),
]


def _clash(layout) -> list:
    """Pairs of buffers that meet in time and overlap in memory."""
    spans = sorted(layout.spans, key=lambda s: s[3])  # by offset
    found = []
    for i, (_, key, floats, at, first, last) in enumerate(spans):
        end = at + -(-floats // ALIGN) * ALIGN
        for _, other, _, at2, first2, last2 in spans[i + 1 :]:
            if at2 >= end:
                break
            if first2 <= last and first <= last2:
                found.append((key, other))
    return found


@pytest.mark.parametrize("input_grads", [True, False], ids=["inputs", "weights only"])
@pytest.mark.parametrize("spec, name", NETWORKS, ids=lambda v: str(v).split("/")[-1][:20])
def test_buffers_that_live_together_never_share_memory(spec, name, input_grads):
    plan = build_grad_plan(cnnc.load(spec, network=name), True)
    layout = plan.layout(GRADS, input_grads)
    assert not _clash(layout)
    assert all(at % ALIGN == 0 for *_, at, _, _ in layout.spans)
    assert layout.peak <= layout.size <= 1.05 * layout.peak + ALIGN


def test_a_value_read_twice_by_one_step_and_a_softmax_output_under_each_loss(torch):
    twice = cnnc.load(
        "network t(x: 2x6x6) {\n  y = x | conv(3, k=3, p=1) | bn\n"
        "  return add(y, y) | relu | gap | flatten | fc(3) | softmax\n}\n"
    )
    rng = np.random.default_rng(5)
    x = rng.standard_normal((2, 2, 6, 6)).astype(np.float32)
    compare(torch, twice, {"x": x}, np.array([0, 2]), "cross_entropy")
    compare(torch, twice, {"x": x}, rng.standard_normal((2, 3)).astype(np.float32), "mse")


def test_the_workspace_estimate_holds_what_the_kernels_keep():
    """After a training step, the CPU backend's kept buffers (per-thread scratch, padded
    inputs, weight-gradient sums and chunks) fit in ``cnnc check --train``'s workspace."""
    import numba

    from cnnc.runtime import weights as weights_io
    from cnnc.runtime.backends import backend_for
    from cnnc.runtime.backends.cpu.workspace import training_workspace
    from cnnc.runtime.backprop import GradExecutor

    net = cnnc.load(
        "network w(x: 3x16x16) {\n  return x | conv(16, k=3, p=1) | bn | relu"
        " | conv(32, k=3, s=2, p=1) | relu | dwconv(k=3, p=1) | conv(64, k=1) | relu"
        " | conv(96, k=3, p=1) | gap | flatten | fc(4)\n}\n"
    )
    plan = build_grad_plan(net, True)
    backend = backend_for("cpu", "direct", tune=False)
    executor = GradExecutor(plan, backend, 4, input_grads=False)
    executor.load(weights_io.initialise(net, 0))
    x = np.random.default_rng(6).standard_normal((4, 3, 16, 16)).astype(np.float32)
    executor.forward({"x": x})
    executor.loss({"out": np.array([0, 1, 2, 3])}, "cross_entropy")
    executor.backward()
    kept = backend._scratch.nbytes + sum(b.nbytes for b in backend._buffers.values())
    estimate = training_workspace(plan, 4, numba.get_num_threads())
    assert kept <= estimate
