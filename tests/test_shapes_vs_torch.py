"""Output shapes of conv, pooling and transposed conv agree with PyTorch on random configs."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

import cnnc

SETTINGS = settings(max_examples=60, deadline=None)


def our_shape(stage: str, c: int, h: int, w: int):
    result = cnnc.check(f"network n(x: {c}x{h}x{w}) {{ return x | {stage} }}")
    return result.networks[0].output_shapes["out"] if result.ok else None


def torch_shape(torch, module, c, h, w):
    try:
        with torch.no_grad():
            shape = tuple(module(torch.zeros(1, c, h, w)).shape[1:])
    except RuntimeError:
        return None
    return shape if min(shape) > 0 else None  # an empty output is an error for us


@st.composite
def window(draw):
    k = (draw(st.integers(1, 5)), draw(st.integers(1, 5)))
    s = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    d = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    p = (draw(st.integers(0, 3)), draw(st.integers(0, 3)))
    h, w = draw(st.integers(1, 17)), draw(st.integers(1, 17))
    return k, s, d, p, h, w


@SETTINGS
@given(window(), st.sampled_from([1, 2, 3]))
def test_conv_shape(torch, cfg, g):
    k, s, d, p, h, w = cfg
    c, out = 3 * g, 2 * g
    ours = our_shape(f"conv({out}, k={k}, s={s}, p={p}, d={d}, g={g})", c, h, w)
    ref = torch_shape(torch, torch.nn.Conv2d(c, out, k, s, p, d, g), c, h, w)
    assert ours == ref


@SETTINGS
@given(window(), st.booleans())
def test_maxpool_shape(torch, cfg, ceil):
    k, s, d, p, h, w = cfg
    p = tuple(min(pp, kk // 2) for pp, kk in zip(p, k))
    stage = f"maxpool(k={k}, s={s}, p={p}, d={d}, ceil={'true' if ceil else 'false'})"
    ref = torch_shape(torch, torch.nn.MaxPool2d(k, s, p, d, ceil_mode=ceil), 2, h, w)
    assert our_shape(stage, 2, h, w) == ref


@SETTINGS
@given(window(), st.booleans())
def test_avgpool_shape(torch, cfg, ceil):
    k, s, _, p, h, w = cfg
    p = tuple(min(pp, kk // 2) for pp, kk in zip(p, k))
    stage = f"avgpool(k={k}, s={s}, p={p}, ceil={'true' if ceil else 'false'})"
    ref = torch_shape(torch, torch.nn.AvgPool2d(k, s, p, ceil_mode=ceil), 2, h, w)
    assert our_shape(stage, 2, h, w) == ref


@SETTINGS
@given(window(), st.integers(0, 2), st.sampled_from([1, 2]))
def test_convt_shape(torch, cfg, op, g):
    k, s, d, p, h, w = cfg
    op_pair = (min(op, max(s[0], d[0]) - 1), min(op, max(s[1], d[1]) - 1))
    stage = f"convt({2 * g}, k={k}, s={s}, p={p}, op={op_pair}, d={d}, g={g})"
    module = torch.nn.ConvTranspose2d(2 * g, 2 * g, k, s, p, op_pair, g, dilation=d)
    assert our_shape(stage, 2 * g, h, w) == torch_shape(torch, module, 2 * g, h, w)


def test_same_padding_matches_torch(torch):
    for k, d, s in [(3, 1, 1), (5, 2, 1), (3, 1, 2), (7, 3, 1)]:
        ours = our_shape(f"conv(4, k={k}, d={d}, s={s}, p=same)", 2, 15, 12)
        pad = d * (k - 1) // 2
        assert ours == torch_shape(torch, torch.nn.Conv2d(2, 4, k, s, pad, d), 2, 15, 12)
