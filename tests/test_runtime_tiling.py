"""The CPU conv kernel gives the same result under every tiling (rows per tile, channel
blocks), on both of its paths (im2col, shifted GEMM), against torch's conv2d.

The executor picks one tiling per layer shape, so whole-network tests cover few tilings; this
forces them, including tiles that do not divide the image and blocks that leave a remainder.
"""

from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kernel_cases import numba_threads

from cnnc.compiler.ops import OPS
from cnnc.runtime.backends.cpu import conv as cpu
from cnnc.runtime.backends.cpu import tiling
from cnnc.runtime.backends.cpu.blas import SMALL_MNK

ACTS = ["none", "relu", "leaky_relu", "sigmoid"]


def run_conv(x, wt, bias, res, stride, pad, dil, groups, act, rows, blocks, threads):
    """cnnc's kernel on NCHW arrays with a torch-layout weight; returns NCHW."""
    n, c_in, h, w = x.shape
    c_out, cg, kh, kw = wt.shape
    og = c_out // groups
    ho = (h + 2 * pad - dil * (kh - 1) - 1) // stride + 1
    wo = (w + 2 * pad - dil * (kw - 1) - 1) // stride + 1
    wmat = np.stack(
        [
            wt[g * og : (g + 1) * og].transpose(2, 3, 1, 0).reshape(kh * kw * cg, og)
            for g in range(groups)
        ]
    )
    out = np.full((n, ho, wo, c_out), np.nan, np.float32)
    res_nhwc = (
        np.ascontiguousarray(res.transpose(0, 2, 3, 1))
        if res is not None
        else np.empty((0, 0, 0, 0), np.float32)
    )
    x_nhwc = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
    floats = tiling.conv_scratch_floats(
        rows, blocks, x_nhwc.shape, out.shape, kh, kw, stride, stride, pad, pad, dil, dil, groups
    )
    scratch = np.full((threads, floats + 1), np.nan, np.float32)
    cpu.convolve(
        x_nhwc,
        np.ascontiguousarray(wmat),
        bias,
        res_nhwc,
        out,
        scratch,
        kh,
        kw,
        stride,
        stride,
        pad,
        pad,
        dil,
        dil,
        groups,
        OPS[act].code if act in OPS else 0,
        np.float32(0.1),
        np.float32(0.0),
        rows,
        blocks,
    )
    return out.transpose(0, 3, 1, 2)


def reference(torch, x, wt, bias, res, stride, pad, dil, groups, act):
    f = torch.nn.functional
    y = f.conv2d(
        torch.from_numpy(x), torch.from_numpy(wt), torch.from_numpy(bias), stride, pad, dil, groups
    )
    if res is not None:
        y = y + torch.from_numpy(res)
    y = {
        "none": y,
        "relu": f.relu(y),
        "leaky_relu": f.leaky_relu(y, 0.1),
        "sigmoid": torch.sigmoid(y),
    }[act]
    return y.numpy()


@settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.data())
def test_conv_matches_torch_under_any_tiling(torch, data):
    """Kernels 1-13, strides 1-4, padding 0 to the kernel, dilation 1-3, inputs up to 40x40,
    groups, on 1 or 2 threads (and 1 to 3 threads' worth of work items)."""
    draw = data.draw
    groups = draw(st.sampled_from([1, 2, 3]))
    shifted = draw(st.booleans())  # stride 1, wider than 1x1, 32+ channels per group
    cg = draw(st.sampled_from([32, 40] if shifted else [1, 3, 32]))
    og = draw(st.sampled_from([1, 8, 24, 72]))
    kh, kw = draw(st.integers(1, 13)), draw(st.integers(2 if shifted else 1, 13))
    stride = 1 if shifted else draw(st.integers(1, 4))
    pad, dil = draw(st.integers(0, min(kh, kw))), draw(st.integers(1, 3))
    h = draw(st.integers(max(1, dil * (kh - 1) + 1 - 2 * pad), 40))
    w = draw(st.integers(max(1, dil * (kw - 1) + 1 - 2 * pad), 40))
    batch = draw(st.integers(1, 2))
    ho = (h + 2 * pad - dil * (kh - 1) - 1) // stride + 1
    rows, blocks = draw(st.integers(1, ho)), draw(st.integers(1, 4))
    threads = draw(st.integers(1, 3))
    act = draw(st.sampled_from(ACTS))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    x = rng.standard_normal((batch, cg * groups, h, w)).astype(np.float32)
    scale = float(np.sqrt(cg * kh * kw))
    wt = rng.standard_normal((og * groups, cg, kh, kw)).astype(np.float32) / scale
    bias = rng.standard_normal(og * groups).astype(np.float32)
    wo = (w + 2 * pad - dil * (kw - 1) - 1) // stride + 1
    res = (
        rng.standard_normal((batch, og * groups, ho, wo)).astype(np.float32)
        if draw(st.booleans())
        else None
    )
    with numba_threads(draw(st.integers(1, 2))):
        got = run_conv(x, wt, bias, res, stride, pad, dil, groups, act, rows, blocks, threads)
    want = reference(torch, x, wt, bias, res, stride, pad, dil, groups, act)
    np.testing.assert_allclose(got, want, rtol=2e-4, atol=2e-4)


def test_shifted_tiles_stay_within_the_small_gemm_limit():
    """The measured choices for ResNet's stride-1 3x3 layers: 64-channel blocks, and per-tap
    GEMMs within OpenBLAS's unpacked kernels, with at least two work items per thread."""
    for h, c in [(56, 64), (28, 128), (14, 256), (7, 512), (224, 64), (28, 512)]:
        wp = h + 2
        rows, blocks = tiling.conv_tiling((1, h, h, c), (1, h, h, c), 3, 3, 1, 1, 1, 1, 2)
        block = -(-c // blocks)
        assert block == 64, (h, c, rows, blocks)
        assert rows * wp * block * c <= SMALL_MNK, (h, c, rows, blocks)
        assert -(-h // rows) * blocks >= 4, (h, c, rows, blocks)
    assert tiling.conv_tiling((1, 56, 56, 64), (1, 56, 56, 64), 3, 3, 1, 1, 1, 1, 2) == (4, 1)
    assert tiling.conv_tiling((1, 7, 7, 512), (1, 7, 7, 512), 3, 3, 1, 1, 1, 1, 2) == (3, 8)
