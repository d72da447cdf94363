"""Convolution gradients against ``torch.autograd`` over random geometries: plain, grouped,
depthwise (with channel multipliers) and transposed convolutions, kernels 1-13, strides 1-4,
padding 0..k, dilation 1-3, on one and on two Numba threads. Input, weight and bias
gradients all go through ``cnnc.grad`` (the training plan, forward and backward kernels)."""

from __future__ import annotations

import zlib

import numba
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_gradients import compare

import cnnc


def _pair(draw, lo, hi):
    return draw(st.integers(lo, hi)), draw(st.integers(lo, hi))


@st.composite
def conv_layers(draw, max_kernel=13):
    """``(spec line, input shape)`` of a conv, dwconv or convt layer whose output is at
    least one pixel, inputs of about 20 pixels or fewer a side (more only where a dilated
    kernel needs them)."""
    op = draw(st.sampled_from(["conv", "dwconv", "convt"]))
    k, s, d = _pair(draw, 1, max_kernel), _pair(draw, 1, 4), _pair(draw, 1, 3)
    p = tuple(draw(st.integers(0, kk)) for kk in k)
    size = []
    if op == "convt":
        out_pad = tuple(draw(st.integers(0, max(ss, dd) - 1)) for ss, dd in zip(s, d))
        for kk, ss, pp, dd, oo in zip(k, s, p, d, out_pad):
            # (n - 1) * s - 2p + d (k - 1) + op + 1 >= 1
            least = max(1, 1 - (-(2 * pp - dd * (kk - 1) - oo) // ss))
            size.append(draw(st.integers(least, max(least, 12))))
    else:
        for kk, pp, dd in zip(k, p, d):
            least = max(1, dd * (kk - 1) + 1 - 2 * pp)
            size.append(draw(st.integers(least, max(least + 4, 20))))
    geometry = f"k={k}, s={s}, p={p}, d={d}"
    if op == "dwconv":
        c = draw(st.integers(1, 5))
        line = f"dwconv({geometry}, m={draw(st.integers(1, 3))})"
    else:
        g = draw(st.integers(1, 3))
        # 32 channels a group: stride-1 weight gradients take the shifted GEMMs
        c = g * draw(st.sampled_from([1, 2, 3, 32]))
        out = g * draw(st.sampled_from([1, 2, 3, 8]))
        extra = f", op={out_pad}" if op == "convt" else ""
        line = f"{op}({out}, {geometry}{extra}, g={g})"
    if draw(st.booleans()):
        line = line[:-1] + ", bias=false)"
    return line, (c, *size)


def check_layer(torch, line: str, shape: tuple, batch: int, threads: int) -> None:
    if numba.config.NUMBA_NUM_THREADS < threads:
        pytest.skip(f"Numba runs at most {numba.config.NUMBA_NUM_THREADS} thread(s) here")
    net = cnnc.load(f"network t(x: {'x'.join(map(str, shape))}) {{ return x | {line} }}")
    rng = np.random.default_rng(zlib.crc32(f"{line} {shape} {batch}".encode()))
    x = rng.standard_normal((batch, *shape)).astype(np.float32)
    out = next(iter(net.outputs.values())).shape
    target = rng.standard_normal((batch, *out)).astype(np.float32)
    before = numba.get_num_threads()
    numba.set_num_threads(threads)
    try:
        compare(torch, net, {"x": x}, target, "mse", train=True)
    finally:
        numba.set_num_threads(before)


@pytest.mark.parametrize("threads", [1, 2])
@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
@given(layer=conv_layers(), batch=st.integers(1, 3))
def test_conv_gradients_match_autograd(torch, threads, layer, batch):
    check_layer(torch, *layer, batch, threads)


@pytest.mark.slow
@pytest.mark.parametrize("threads", [1, 2])
@settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck))
@given(layer=conv_layers(), batch=st.integers(1, 4))
def test_conv_gradients_match_autograd_sweep(torch, threads, layer, batch):
    check_layer(torch, *layer, batch, threads)


@pytest.mark.parametrize(
    "line, shape",
    [
        ("conv(8, k=13, s=4, p=13, d=3, g=2)", (4, 12, 11)),  # padding past the dilated kernel
        ("conv(6, k=(1, 13), s=(4, 1), p=(0, 6), g=3)", (6, 7, 20)),
        ("conv(4, k=1, s=3, p=1)", (3, 8, 8)),  # 1x1 strided and padded: im2col
        ("conv(40, k=3, p=1)", (32, 7, 6)),  # shifted GEMMs, data gradient on the forward path
        ("conv(64, k=(3, 2), p=(2, 0), d=(2, 1), g=2)", (64, 9, 8)),
        ("conv(33, k=2, p=2)", (32, 5, 5)),  # padded past the kernel: col2im data gradient
        ("conv(5, k=1)", (3, 6, 5)),  # 1x1 stride 1: the image itself
        ("dwconv(k=5, s=2, p=2, m=3)", (4, 11, 9)),
        ("dwconv(k=(3, 7), s=(1, 3), p=(3, 0), d=(2, 1))", (16, 10, 14)),
        ("convt(6, k=4, s=3, p=2, op=2, d=2, g=3)", (6, 5, 4)),
        ("convt(4, k=1, s=2)", (3, 4, 5)),
    ],
)
def test_conv_gradient_corners(torch, line, shape):
    check_layer(torch, line, shape, 2, min(2, numba.config.NUMBA_NUM_THREADS))
