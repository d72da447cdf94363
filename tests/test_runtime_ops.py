"""Every op's CPU kernel against PyTorch on random configurations (shapes first, then values).

Each case runs the optimised plan (folding, fusion) and the plain one; both must match torch.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import cnnc
import torch_reference
from cnnc.compiler.ops import OPS, Activation

RTOL = ATOL = 2e-4  # float32 sums of a few hundred terms
CASES = settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))


def compare(torch, spec: str, batch: int = 2, seed: int = 0, spread: float = 1.0) -> bool:
    """Run ``spec`` optimised and plain against torch (assertions inside); False, running
    nothing, where the checker rejects it. Callers assert the result: random configurations
    compare it with their own reading of PyTorch's rules (``fits``), so that a checker that
    rejected valid layers, or accepted invalid ones, fails the test."""
    result = cnnc.check(spec)
    if not result.ok:
        return False  # an invalid random configuration: the checker rejected it cleanly
    net = result.networks[0]
    weights = torch_reference.random_weights(net, seed)
    rng = np.random.default_rng(seed)
    inputs = {
        n: (spread * rng.standard_normal((batch, *layer.shape))).astype(np.float32)
        for n, layer in net.inputs.items()
    }
    want = torch_reference.forward(torch, net, weights, inputs)
    for optimize in (True, False):
        got = cnnc.run(net, inputs, weights, optimize=optimize)
        for name in want:
            assert got[name].shape == want[name].shape, name
            np.testing.assert_allclose(
                got[name],
                want[name],
                rtol=RTOL,
                atol=ATOL,
                err_msg=f"{name} optimize={optimize}\n{spec}",
            )
    return True


def net(stage: str, shape: str) -> str:
    return f"network t(x: {shape}) {{\n  return x | {stage}\n}}\n"


def fits(size: int, k: int, p: int = 0, d: int = 1) -> bool:
    """PyTorch's rule for a window along one side: the dilated kernel fits the padded input."""
    return size + 2 * p >= d * (k - 1) + 1


def pooled(n: int, k: int, s: int, p: int, d: int, ceil: bool) -> int:
    """PyTorch's pooled size (``pooling_output_shape``): with ``ceil``, a last partial window
    counts if it starts inside the input or its left padding."""
    out = (n + 2 * p - d * (k - 1) - 1 + (s - 1 if ceil else 0)) // s + 1
    return out - 1 if ceil and (out - 1) * s >= n + p else out


def pair(v) -> tuple:
    return v if isinstance(v, tuple) else (v, v)


def compared(torch, spec: str, valid: bool, batch: int = 2) -> None:
    """Compare a random configuration that PyTorch's rules call ``valid`` (or not): the
    checker must agree, and only valid ones count as examples."""
    assert compare(torch, spec, batch) == valid, (
        f"the checker disagrees with torch's rules on\n{spec}"
    )
    assume(valid)


def test_the_harness_fails_on_a_wrong_reference_or_a_wrong_rejection(torch, monkeypatch):
    """``compare`` fails when the reference is off by a little, and ``compared`` fails when
    the checker rejects a layer that PyTorch's rules accept (or accepts one they reject)."""
    spec = net("conv(4, k=3, p=1) | relu", "2x5x5")
    assert compare(torch, spec)
    right = torch_reference.REFERENCE["conv"]
    monkeypatch.setitem(
        torch_reference.REFERENCE, "conv", lambda F, xs, a, w: right(F, xs, a, w) + 1e-3
    )
    with pytest.raises(AssertionError, match="Not equal to tolerance"):
        compare(torch, spec)
    monkeypatch.undo()
    with pytest.raises(AssertionError, match="disagrees"):
        compared(torch, net("conv(4, k=7)", "2x5x5"), valid=True)
    with pytest.raises(AssertionError, match="disagrees"):
        compared(torch, spec, valid=False)


sizes = st.integers(1, 9)
pairs = st.one_of(st.integers(1, 3), st.tuples(st.integers(1, 3), st.integers(1, 3)))


@CASES
@given(
    st.integers(1, 4),
    sizes,
    sizes,
    st.integers(1, 3),
    st.integers(1, 3),
    st.integers(1, 2),
    st.integers(0, 2),
    st.integers(1, 2),
    st.sampled_from([1, 2]),
    st.booleans(),
    st.sampled_from(
        ["", " | relu", " | leaky_relu(0.2)", " | bn | relu6", " | sigmoid", " | tanh"]
    ),
    st.integers(1, 3),
)
def test_conv(torch, cg, h, w, kh, kw, s, p, d, g, bias, tail, batch):
    spec = net(
        f"conv({2 * g}, k=({kh}, {kw}), s={s}, p={p}, d={d}, g={g}, "
        f"bias={'true' if bias else 'false'}){tail}",
        f"{cg * g}x{h}x{w}",
    )
    compared(torch, spec, fits(h, kh, p, d) and fits(w, kw, p, d), batch)


@CASES
@given(
    st.sampled_from([1, 3]),
    st.integers(1, 2),
    st.integers(0, 1),
    st.integers(1, 2),
    st.integers(1, 2),
    sizes,
    sizes,
)
def test_depthwise(torch, k, s, p, d, m, h, w):
    spec = net(f"dwconv(k={k}, s={s}, p={p}, d={d}, m={m}) | bn | relu", f"3x{h}x{w}")
    compared(torch, spec, fits(h, k, p, d) and fits(w, k, p, d))


def test_conv_same_padding_and_large_tiles(torch):
    assert compare(
        torch, net("conv(32, k=3, p=same) | relu | conv(16, k=5, d=2, p=same)", "16x23x19"), batch=3
    )
    assert compare(torch, net("conv(64, k=3, s=2, p=1)", "64x28x28"), batch=1)
    assert compare(torch, net("conv(24, k=1) | conv(24, k=1, s=2)", "40x15x15"), batch=2)


@CASES
@given(
    st.integers(1, 3),
    sizes,
    sizes,
    st.integers(1, 3),
    st.integers(1, 3),
    st.integers(0, 2),
    st.integers(0, 1),
    st.integers(1, 2),
    st.sampled_from([1, 2]),
)
def test_convt(torch, c, h, w, k, s, p, op, d, g):
    op = min(op, max(s, d) - 1)
    spec = net(
        f"convt({2 * g}, k={k}, s={s}, p={p}, op={op}, d={d}, g={g}) | bn", f"{c * g}x{h}x{w}"
    )
    # PyTorch's output size, (n - 1) s - 2p + d (k - 1) + op + 1, must be at least one pixel
    compared(torch, spec, all((n - 1) * s - 2 * p + d * (k - 1) + op >= 0 for n in (h, w)))


@CASES
@given(
    st.sampled_from(["maxpool", "avgpool"]),
    sizes,
    sizes,
    pairs,
    pairs,
    st.integers(0, 1),
    st.booleans(),
    st.booleans(),
    st.integers(1, 2),
)
def test_pooling(torch, op, h, w, k, s, p, ceil, count_pad, d):
    extra = f"d={d}" if op == "maxpool" else f"count_pad={'true' if count_pad else 'false'}"
    spec = net(
        f"{op}(k={k}, s={s}, p={p}, ceil={'true' if ceil else 'false'}, {extra})", f"3x{h}x{w}"
    )
    d = d if op == "maxpool" else 1
    valid = all(
        p <= kk // 2 and pooled(n, kk, ss, p, d, ceil) >= 1
        for n, kk, ss in zip((h, w), pair(k), pair(s))
    )
    compared(torch, spec, valid)


@pytest.mark.parametrize(
    "stage",
    [
        "gap",
        "gmp",
        "softmax",
        "lrn",
        "lrn(size=3, k=2)",
        "upsample(2)",
        "upsample(3, mode=bilinear)",
        "upsample((2, 3), mode=bilinear)",
        "upsample((1, 2))",
        "bn",
        "bn | relu",
        "relu6",
        "leaky_relu(0.3)",
        "sigmoid",
        "tanh",
        "identity",
        "dropout",
        "flatten",
        "flatten | fc(7)",
        "flatten | fc(5) | bn | relu",
        "flatten | softmax",
        "gap | flatten | fc(3, bias=false)",
    ],
)
def test_single_ops(torch, stage):
    assert compare(torch, net(stage, "6x5x7"), batch=2)


def test_merges_and_crop(torch):
    spec = """
network t(x: 4x9x9) {
    a = x | conv(4, k=3, p=1) | bn
    b = x | conv(4, k=3, p=1)
    c = add(a, b, x) | relu
    d = concat(c, x, a) | conv(8, k=1) | relu
    e = crop(d, x | conv(2, k=3) | maxpool(k=2))
    f = add(x | conv(4, k=1) | bn, c | relu)
    return e, f, concat(x | gap | flatten, x | gmp | flatten)
}
"""
    assert compare(torch, spec, batch=2)


@pytest.mark.parametrize("parallel", [False, True])
@pytest.mark.parametrize("batch", [1, 2, 3, 4, 5, 7, 9])
def test_fc_streamed_and_through_gemm(torch, batch, parallel, monkeypatch):
    """Few images stream the weights (groups of four and a remainder), more go through
    sgemm; on one thread and on all: each with the residual add and activation fused."""
    from cnnc.runtime.backends.cpu import conv

    if parallel:
        monkeypatch.setattr(conv, "FC_PARALLEL_FLOATS", 0)
    spec = """
network t(x: 5x3x3) {
    a = x | flatten | fc(37) | relu
    return add(a, a | fc(37)) | silu
}
"""
    assert compare(torch, spec, batch=batch)


def test_residual_fusion_keeps_order(torch):
    spec = """
block res(x, c) {
    y = x | conv(c, k=3, p=1, bias=false) | bn | relu | conv(c, k=3, p=1) | bn
    shortcut = x | conv(c, k=1, bias=false) | bn
    return add(y, shortcut) | relu
}
network t(x: 3x8x8) {
    return x | res(8) | res(8)
}
"""
    assert compare(torch, spec, batch=2)


def test_plan_folds_and_fuses_and_reuses_buffers():
    from cnnc.runtime.plan import build_plan
    from cnnc.runtime.weights import initialise

    net = cnnc.load(torch_reference_path("resnet.cnn"), network="resnet18")
    plan = build_plan(net, initialise(net))
    kernels = [s.kernel for s in plan.steps]
    assert "affine" not in kernels and "act" not in kernels and "add" not in kernels
    assert plan.peak_floats < plan.naive_floats / 5
    plain = build_plan(net, initialise(net), optimize=False)
    assert len(plain.steps) == len(net.layers) - 1  # flatten of a 512x1x1 map moves nothing


def torch_reference_path(name):
    from conftest import SPECS

    return SPECS / name


@pytest.mark.parametrize("name", sorted(OPS))
def test_every_registered_op(torch, name):
    """Each op of the registry on its example input (values spread to reach every branch)."""
    op = OPS[name]
    assert compare(torch, net(op.example or name, op.example_input), batch=2, spread=3.0)


@pytest.mark.parametrize(
    "name", sorted(n for n, op in OPS.items() if isinstance(op, Activation) and op.code)
)
@pytest.mark.parametrize(
    "producer",
    ["conv(5, k=3, p=1)", "conv(5, k=3, p=1) | bn", "dwconv(k=3, p=1)", "gap | flatten | fc(5)"],
)
def test_activations_fused_into_epilogues(torch, name, producer):
    op = OPS[name]
    assert compare(torch, net(f"{producer} | {op.example or name}", "6x5x7"), spread=3.0)


@CASES
@given(
    st.integers(1, 6),
    st.integers(1, 6),
    st.integers(1, 13),
    st.integers(1, 13),
    st.sampled_from(["bilinear", "nearest"]),
    st.integers(1, 4),
)
def test_resize(torch, h, w, ho, wo, mode, c):
    assert compare(torch, net(f"resize(size=({ho}, {wo}), mode={mode})", f"{c}x{h}x{w}"))


@CASES
@given(
    st.integers(2, 7),
    st.integers(2, 7),
    st.tuples(*[st.integers(0, 3)] * 4),
    st.sampled_from(["zeros", "reflect", "replicate"]),
)
def test_pad(torch, h, w, p, mode):
    top, bottom, left, right = p
    # PyTorch: reflect padding smaller than the side it mirrors
    valid = mode != "reflect" or (max(top, bottom) < h and max(left, right) < w)
    compared(torch, net(f"pad({p}, mode={mode})", f"3x{h}x{w}"), valid)


@CASES
@given(
    st.integers(1, 4),
    st.integers(1, 4),
    st.integers(1, 9),
    st.integers(1, 9),
    st.integers(1, 4),
    st.integers(1, 4),
)
def test_adaptive_avgpool_and_groupnorm(torch, g, cg, h, w, oh, ow):
    assert compare(
        torch,
        net(f"groupnorm({g}) | adaptive_avgpool(({oh}, {ow})) | layernorm", f"{g * cg}x{h}x{w}"),
    )


@CASES
@given(st.integers(1, 4), st.integers(1, 6), st.data())
def test_channel_slices_and_shuffles(torch, g, cg, data):
    c = g * cg
    start = data.draw(st.integers(0, c - 1))
    stop = data.draw(st.integers(start + 1, c))
    assert compare(torch, net(f"shuffle({g}) | slice({start}, {stop}) | prelu", f"{c}x3x4"))


def test_squeeze_and_excitation_shapes(torch):
    spec = """
network t(x: 6x5x7) {
    y = x | conv(8, k=3, p=1) | hardswish
    gate = y | gap | conv(2, k=1) | relu | conv(8, k=1) | hardsigmoid
    one = y | gap | conv(1, k=1) | sigmoid
    v = x | gap | flatten | fc(4)
    return mul(y, gate) | silu, mul(one, y, y), mul(v, v | sigmoid) | clamp(hi=0.3)
}
"""
    assert compare(torch, spec, batch=3)


@pytest.mark.parametrize("shape", ["5x3x4", "40x90x90"])
def test_global_pooling_on_one_thread_and_on_all(torch, shape):
    """Small inputs pool on one thread, large batches (past PARALLEL_GAP_FLOATS in all, as
    many images as threads) over the images on all."""
    from cnnc.runtime.backends.cpu import pool

    c, h, w = map(int, shape.split("x"))
    assert (3 * c * h * w >= pool.PARALLEL_GAP_FLOATS) == (shape == "40x90x90")
    assert compare(torch, net("gap | flatten", shape), batch=3)


@pytest.mark.parametrize("shape", [(1, 7, 7, 5), (2, 9, 11, 33), (3, 112, 112, 32), (1, 1, 3, 4)])
def test_every_global_pool_kernel_takes_the_mean(shape):
    """The three global average pools (small images, the unrolled loops, over images on
    every thread) all give the mean over the pixels, for pixel counts with and without a
    remainder of four."""
    from cnnc.runtime.backends.cpu import pool

    x = np.random.default_rng(sum(shape)).standard_normal(shape).astype(np.float32)
    want = x.astype(np.float64).mean(axis=(1, 2))
    for kernel in (pool.gap_small, pool.gap, pool.gap_parallel):
        out = np.full((shape[0], 1, 1, shape[3]), np.nan, np.float32)
        kernel(x, out)
        np.testing.assert_allclose(out[:, 0, 0], want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("channels", [1, 3, 32, 33])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_inputs_into_nhwc_channel_by_channel_and_whole(channels, dtype):
    """The CPU backend's NCHW -> NHWC copy (per channel up to SMALL_INPUT_CHANNELS, one
    transposed copy above) equals NumPy's transpose, for strided and float64 inputs too."""
    from cnnc.runtime.backends.cpu import SMALL_INPUT_CHANNELS, CpuBackend

    assert 3 <= SMALL_INPUT_CHANNELS < 33  # both branches run below
    rng = np.random.default_rng(channels)
    x = rng.standard_normal((2, channels, 5, 14)).astype(dtype)[:, :, :, ::2]  # strided
    out = np.full((2, 5, 7, channels), np.nan, np.float32)
    CpuBackend().nchw_to_runtime(x, out)
    np.testing.assert_array_equal(out, x.transpose(0, 2, 3, 1).astype(np.float32))


@pytest.mark.parametrize("channels", [3, 16, 64, 67])
def test_maxpool_kernel_propagates_nan_into_a_channel_slice(torch, channels):
    """The CPU max pool (unsigned, vectorised channel loops) equals PyTorch's, NaNs and all,
    when it writes into a concatenation's channel slice (strided output) and leaves the
    neighbouring channels alone."""
    from cnnc.runtime.backends.cpu.pool import maxpool

    rng = np.random.default_rng(channels)
    x = rng.standard_normal((2, 13, 12, channels)).astype(np.float32)
    x[0, 4, 5, channels // 2] = np.nan
    x[1, 0, 0, 0] = np.nan
    x[1, 7, 3, :] = -np.inf
    whole = np.full((2, 7, 6, channels + 9), 7.0, np.float32)
    maxpool(x, whole[..., 4 : 4 + channels], 3, 3, 2, 2, 1, 1, 1, 1)
    nchw = torch.from_numpy(x).permute(0, 3, 1, 2)
    expected = torch.nn.functional.max_pool2d(nchw, 3, 2, 1).permute(0, 2, 3, 1).numpy()
    np.testing.assert_array_equal(whole[..., 4 : 4 + channels], expected)
    assert (whole[..., :4] == 7).all() and (whole[..., 4 + channels :] == 7).all()


@pytest.mark.parametrize("shape", [(2, 3, 5, 7), (3, 3, 400, 300), (1, 40, 181, 151)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_inputs_go_into_nhwc_whatever_their_size(shape, dtype):
    """Small inputs by channel or one copy, large ones (LARGE_INPUT_FLOATS and over) by the
    parallel kernel, float64 converted on the way: the same NHWC array each time."""
    from cnnc.runtime.backends.cpu import LARGE_INPUT_FLOATS, CpuBackend

    x = np.random.default_rng(0).standard_normal(shape).astype(dtype)
    out = np.full((shape[0], shape[2], shape[3], shape[1]), np.nan, np.float32)
    CpuBackend().nchw_to_runtime(x, out)
    np.testing.assert_array_equal(out, x.transpose(0, 2, 3, 1).astype(np.float32))
    assert (x.size >= LARGE_INPUT_FLOATS) == (shape[0] == 3 or shape[1] == 40)
