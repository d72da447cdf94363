"""The depthwise, 1x1 and squeeze-and-excitation fast paths of MobileNet and EfficientNet
blocks against PyTorch: the depthwise tiles (kernels 3 and 5, strides 1 and 2, channel counts
that are not multiples of the vector width, rows wider than a tile, border columns), their
fused bias, activation and residual, the one-thread path of 1x1 convolutions on 1x1 images,
the vectorised sigmoid and SiLU, and the residual add folded through ``droppath``."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from test_runtime_ops import CASES, compare

import cnnc
from cnnc.runtime.backends.cpu import CpuBackend
from cnnc.runtime.backends.cpu.activations import JIT, exp32
from cnnc.runtime.plan import build_plan

MBCONV = """
network t(x: {c}x{h}x{w}) {{
    y = x | conv({e}, k=1, bias=false) | bn | {act}
    y = y | dwconv(k={k}, s={s}, p={p}, bias=false) | bn | {act}
    g = y | gap | conv({sq}, k=1) | {act} | conv({e}, k=1) | sigmoid
    y = mul(y, g) | conv({c}, k=1, bias=false) | bn
    return {ret}
}}
"""


@CASES
@given(
    st.integers(1, 13),
    st.integers(3, 11),
    st.integers(3, 11),
    st.sampled_from([3, 5]),
    st.integers(1, 2),
    st.integers(1, 3),
    st.sampled_from(["silu", "relu6", "hardswish"]),
    st.booleans(),
    st.integers(1, 3),
)
def test_mbconv_blocks(torch, c, h, w, k, s, mult, act, res, batch):
    """A whole inverted-residual block with SE; with the shortcut when the shapes allow it,
    through ``droppath`` (folded into the projection's epilogue)."""
    e = c * mult + 3  # expanded width: odd channel counts on purpose
    res = res and s == 1
    ret = "add(y | droppath(0.2), x)" if res else "y"
    spec = MBCONV.format(
        c=c, h=h, w=w, e=e, k=k, s=s, p=k // 2, act=act, sq=max(1, c // 4), ret=ret
    )
    assert compare(torch, spec, batch=batch)


@pytest.mark.parametrize("c", [1, 7, 17, 40])
@pytest.mark.parametrize(
    "k,s,p,d", [(3, 1, 1, 1), (3, 2, 1, 1), (5, 1, 2, 1), (5, 2, 2, 1), (3, 1, 2, 2), (4, 3, 0, 1)]
)
def test_depthwise_shapes(torch, c, k, s, p, d):
    """Image borders (rows 29 wide: border columns, full tiles and a partial one), strides,
    dilation, kernels other than 3 and 5, batch 3, residual, and an activation of each kind:
    clamped in registers (relu6), computed in registers (SiLU, hardswish) or a pass after the
    kernel (GELU)."""
    act = ["silu", "relu6", "gelu", "hardswish"][(c + k + s) % 4]
    spec = f"""
network t(x: {c}x13x29) {{
    y = x | dwconv(k={k}, s={s}, p={p}, d={d}) | {act}
    z = y | dwconv(k=3, p=1) | bn
    return add(z, y) | silu
}}
"""
    assert compare(torch, spec, batch=3)


def test_droppath_residual_is_folded():
    net = cnnc.load(
        MBCONV.format(
            c=8, h=5, w=5, e=16, k=3, s=1, p=1, act="silu", sq=2, ret="add(y | droppath(0.2), x)"
        )
    )
    steps = build_plan(net, None).steps
    assert "add" not in {s.kernel for s in steps}
    assert steps[-1].residual is not None


@pytest.mark.parametrize("c, hw", [(8, 16), (96, 3)])
def test_gated_projection_scales_weights_or_image(torch, c, hw):
    """The folded gate scales the weight panels (few channels, a large map) or the image
    (many channels, a 3x3 map), whichever is smaller; per image of a batch of two."""
    spec = f"""
network t(x: {c}x{hw}x{hw}) {{
    g = x | gap | conv(4, k=1) | silu | conv({c}, k=1) | sigmoid
    return mul(x, g) | conv(40, k=1) | bn | relu6
}}
"""
    assert compare(torch, spec, batch=2)


def test_se_gate_folds_into_the_projection():
    """The SE multiply becomes the projection's second input (test_mbconv_blocks checks the
    numbers, batches of one to three images); a mul read twice, or followed by a 3x3
    convolution, stays."""
    net = cnnc.load(MBCONV.format(c=8, h=5, w=5, e=16, k=3, s=1, p=1, act="silu", sq=2, ret="y"))
    plan = build_plan(net, None)
    assert "mul" not in {s.kernel for s in plan.steps}
    (gated,) = [s for s in plan.steps if s.kernel == "conv" and len(s.inputs) == 2]
    assert "+mul" in gated.label
    plan.steps = [gated]  # it takes the micro-kernel's default: nothing to tune
    assert not CpuBackend(tune=True).pending_tuning(plan, 1, force=True)
    kept = cnnc.load("""
network t(x: 8x5x5) {
    g = x | gap | conv(8, k=1) | sigmoid
    y = mul(x, g)
    return y | conv(4, k=3, p=1), y | conv(4, k=1)
}
""")
    assert "mul" in {s.kernel for s in build_plan(kept, None).steps}


def test_exp32_is_within_three_ulp():
    from numba import njit

    @njit(**JIT)
    def exp_all(x, out):
        for i in range(x.size):
            out[i] = exp32(x[i])

    x = np.linspace(-87, 88, 1_000_001, dtype=np.float32)
    got = np.empty_like(x)
    exp_all(x, got)
    want = np.exp(x.astype(np.float64))
    assert np.max(np.abs(got - want) / want) < 3 * 2.0**-23


def test_prefetch_hints_compile_to_prefetches_and_never_fault():
    """``prefetch_lines`` (the depthwise runs' output hint) is one prefetch per cache line,
    which reads nothing: ranges past an array, or unmapped (address 0), run without a fault."""
    import platform

    from numba import njit

    from cnnc.runtime.backends.cpu.microkernel import prefetch_lines

    @njit(**JIT)
    def hint(a, start, end):
        prefetch_lines(start, end)
        return a[0]

    a = np.ones(64, np.float32)
    at = a.ctypes.data
    assert hint(a, at, at + a.nbytes) == 1.0
    assert hint(a, 0, 1 << 16) == 1.0  # unmapped
    assert hint(a, at + a.nbytes, at + a.nbytes + (1 << 20)) == 1.0  # past the array
    assert hint(a, at + 64, at) == 1.0  # an empty range
    if platform.machine() in ("x86_64", "AMD64"):
        asm = hint.inspect_asm(hint.signatures[0])
        assert "prefetcht1" in asm
