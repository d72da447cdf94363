"""Every op of the registry is complete: CPU and CUDA kernels forward and backward, a PyTorch
reference for outputs and for gradients, a drawing style, a line in docs/ops.md and the
arithmetic of each of its rules for `--explain`; activations have unique codes, and each runs
fused into a convolution's epilogue as well as on its own."""

from __future__ import annotations

import re

import pytest

import cnnc
import torch_reference
from cnnc.compiler.draw import PALETTE
from cnnc.compiler.ops import OPS, Activation
from cnnc.compiler.ops.base import unexplained
from cnnc.compiler.ops.conv import Conv
from cnnc.runtime.plan import build_plan
from conftest import ROOT, require
from explain_helpers import check_explained

OP_NAMES = sorted(OPS)


def example(op) -> str:
    return f"network t(x: {op.example_input}) {{\n  return x | {op.example or op.name}\n}}\n"


def kernels_of(name: str) -> set[str]:
    """The kernel names the plans of an op's example use (optimised and plain)."""
    net = cnnc.load(example(OPS[name]))
    return {s.kernel for optimize in (True, False) for s in build_plan(net, None, optimize).steps}


@pytest.mark.parametrize("name", OP_NAMES)
def test_op_has_a_cpu_kernel(name):
    from cnnc.runtime.backends.cpu import KERNELS

    assert kernels_of(name) <= set(KERNELS), f"{name}: no CPU kernel"


@pytest.mark.parametrize("name", OP_NAMES)
def test_op_has_a_cuda_kernel(name):
    require("numba.cuda")
    from cnnc.runtime.backends.cuda import KERNELS

    assert kernels_of(name) <= set(KERNELS), f"{name}: no CUDA kernel"


def training_kernels_of(name: str) -> set[str]:
    """The kernel names the training plans of an op's example use (training and evaluation)."""
    from cnnc.runtime.grad_plan import build_grad_plan

    net = cnnc.load(example(OPS[name]))
    return {s.kernel for train in (True, False) for s in build_grad_plan(net, train).steps}


@pytest.mark.parametrize("name", OP_NAMES)
def test_op_has_a_cpu_backward(name):
    from cnnc.runtime.backends.cpu import GRADS, KERNELS

    kernels = training_kernels_of(name)
    assert kernels <= set(KERNELS), f"{name}: no CPU training forward kernel"
    assert kernels <= set(GRADS), f"{name}: no CPU backward for {kernels - set(GRADS)}"


@pytest.mark.parametrize("name", OP_NAMES)
def test_op_has_a_cuda_backward(name):
    require("numba.cuda")
    from cnnc.runtime.backends.cuda import GRADS, KERNELS

    kernels = training_kernels_of(name)
    assert kernels <= set(KERNELS), f"{name}: no CUDA training forward kernel"
    assert kernels <= set(GRADS), f"{name}: no CUDA backward for {kernels - set(GRADS)}"


@pytest.mark.parametrize("name", OP_NAMES)
def test_op_has_a_reference_a_style_and_a_doc_entry(name):
    assert name in torch_reference.REFERENCE, f"{name}: no line in tests/torch_reference.py"
    assert name in torch_reference.TRAINING, f"{name}: no gradient line in torch_reference.py"
    assert OPS[name].family in PALETTE, f"{name}: family {OPS[name].family!r} has no colour"
    doc = (ROOT / "docs" / "ops.md").read_text()
    assert re.search(rf"^\| `{name}` \|", doc, re.M), f"{name}: no row in docs/ops.md"


@pytest.mark.parametrize("name", OP_NAMES)
def test_op_explains_each_of_its_rules(name):
    """`cnnc check --explain`: a class that defines check, weights, macs or rf defines
    explain_shape, explain_params, explain_macs or explain_rf too (compiler/ops/formula.py),
    and on the op's example each formula evaluates to the row's number."""
    missing = unexplained(type(OPS[name]))
    assert not missing, f"{name}: no explanation beside its rule(s) {missing}"
    for layer in cnnc.load(example(OPS[name])).layers:
        check_explained(layer)


def test_a_rule_changed_without_its_explanation_is_caught():
    class Doubled(Conv):
        def macs(self, shapes, out, a):
            return 2 * super().macs(shapes, out, a)

    class Explained(Doubled):
        def explain_macs(self, shapes, out, a):
            return []

    assert unexplained(Doubled) == ["macs"] and unexplained(Explained) == []


def test_activation_codes_are_unique_and_nonzero():
    codes = [op.code for op in OPS.values() if isinstance(op, Activation)]
    assert 0 not in codes and len(codes) == len(set(codes))


def test_kernel_tables_hold_no_stale_names():
    """Every registered CPU kernel is reachable from some op (no dead kernels)."""
    from cnnc.runtime.backends.cpu import KERNELS

    used = set().union(*(kernels_of(n) | training_kernels_of(n) for n in OP_NAMES))
    assert set(KERNELS) <= used, set(KERNELS) - used
