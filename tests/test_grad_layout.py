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

