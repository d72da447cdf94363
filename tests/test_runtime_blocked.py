"""cnnc's own register-blocked convolution (backends/cpu/microkernel.py, blocked.py) against
torch's conv2d: random layers with odd sizes (tiles cut by rows and by the channel panels),
strides, dilations, residuals and activations, and a whole network run on it alone."""

from __future__ import annotations

import os

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kernel_cases import numba_threads
from test_runtime_tiling import reference
from test_runtime_winograd import _net_and_inputs

import torch_reference
from cnnc.compiler.ops import OPS
from cnnc.runtime.backends.cpu import autotune, blocked, caches, microkernel

#: Every way an activation leaves the micro-kernel: a clamp in its registers (none, relu,
#: relu6, clamp), one of its vector activations, or a pass over the output after it (gelu):
#: (alpha, beta, the same in torch).
EPILOGUES = {
    "none": (0.0, 0.0, lambda f, y: y),
    "relu": (0.0, 0.0, lambda f, y: f.relu(y)),
    "relu6": (0.0, 0.0, lambda f, y: f.relu6(y)),
    "clamp": (-0.3, 0.4, lambda f, y: y.clamp(-0.3, 0.4)),
    "leaky_relu": (0.1, 0.0, lambda f, y: f.leaky_relu(y, 0.1)),
    "sigmoid": (0.0, 0.0, lambda f, y: f.sigmoid(y)),
    "silu": (0.0, 0.0, lambda f, y: f.silu(y)),
    "hardswish": (0.0, 0.0, lambda f, y: f.hardswish(y)),
    "hardsigmoid": (0.0, 0.0, lambda f, y: f.hardsigmoid(y)),
    "gelu": (0.0, 0.0, lambda f, y: f.gelu(y)),
}


def run_blocked(
    x, wt, bias, res, stride, pad, dil, act, per_item, blocks, threads, outer=None, wider=0
):
    """The micro-kernel convolution on NCHW arrays with a torch-layout weight; NCHW out.
    The input is read from a copy whose pixels are ``blocked.pixel_stride`` floats apart, or
    ``wider`` floats more than the channels where that is not 0 (1x1 or dilated along x)."""
    n, c_in, h, w = x.shape
    c_out, _, kh, kw = wt.shape
    (sh, sw), (ph, pw), (dh, dw) = stride, pad, dil
    ho = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    wo = (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    wmat = np.ascontiguousarray(wt.transpose(2, 3, 1, 0).reshape(1, kh * kw * c_in, c_out))
    x_nhwc = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
    step = c_in + wider if wider else blocked.pixel_stride(c_in, kw, dil[1])
    xp = np.full((n, h + 2 * ph, w + 2 * pw, step), np.nan, np.float32)
    xp = x_nhwc if not ph and not pw and step == c_in else xp
    out = np.full((n, ho, wo, c_out), np.nan, np.float32)
    res_nhwc = (
        np.ascontiguousarray(res.transpose(0, 2, 3, 1))
        if res is not None
        else np.empty((0, 0, 0, 0), np.float32)
    )
    blocked.blocked_conv(
        x_nhwc,
        xp,
        blocked.pack_panels(wmat),
        bias,
        res_nhwc,
        out,
        np.full((threads, blocked.SCRATCH_FLOATS), np.nan, np.float32),
        kh,
        kw,
        sh,
        sw,
        ph,
        pw,
        dh,
        dw,
        OPS[act].code if act in OPS else 0,
        np.float32(EPILOGUES[act][0]),
        np.float32(EPILOGUES[act][1]),
        per_item,
        blocks,
        blocked.tiles_outer(kh * kw * c_in, c_out, blocks) if outer is None else outer,
    )
    return out.transpose(0, 3, 1, 2)


@settings(max_examples=100, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.data())
def test_blocked_conv_matches_torch(torch, data):
    """Kernels 1-13, strides 1-4, padding 0 to the kernel, dilation 1-3, inputs up to 40x40,
    on 1 or 2 threads (and 1 to 3 threads' worth of work items)."""
    draw = data.draw
    kh, kw = draw(st.integers(1, 13)), draw(st.integers(1, 13))
    stride = (draw(st.integers(1, 4)), draw(st.integers(1, 4)))
    dil = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    pad = (draw(st.integers(0, kh)), draw(st.integers(0, kw)))
    h = draw(st.integers(max(1, dil[0] * (kh - 1) + 1 - 2 * pad[0]), 40))
    w = draw(st.integers(max(1, dil[1] * (kw - 1) + 1 - 2 * pad[1]), 40))
    n = draw(st.integers(1, 2))
    c_in = draw(st.integers(1, 40))
    c_out = draw(st.integers(1, 2 * microkernel.NR + 5))
    act = draw(st.sampled_from(sorted(EPILOGUES)))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    x = rng.standard_normal((n, c_in, h, w)).astype(np.float32)
    wt = (rng.standard_normal((c_out, c_in, kh, kw)) / np.sqrt(c_in * kh * kw)).astype(np.float32)
    bias = rng.standard_normal(c_out).astype(np.float32)
    want = reference(torch, x, wt, bias, None, stride, pad, dil, 1, "none")
    res = rng.standard_normal(want.shape).astype(np.float32) if draw(st.booleans()) else None
    want = reference(torch, x, wt, bias, res, stride, pad, dil, 1, "none")
    want = EPILOGUES[act][2](torch.nn.functional, torch.from_numpy(want)).numpy()
    with numba_threads(draw(st.integers(1, 2))):
        got = run_blocked(
            x,
            wt,
            bias,
            res,
            stride,
            pad,
            dil,
            act,
            per_item=draw(st.integers(1, 9)),
            blocks=draw(st.integers(1, 4)),
            threads=draw(st.integers(1, 3)),
            wider=draw(st.integers(0, 5)) if kw == 1 or dil[1] > 1 else 0,
        )
    np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-5)


@settings(max_examples=50, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.data())
def test_wide_dilations_skip_the_taps_that_read_padding(torch, data):
    """DeepLabV3's ASPP (3x3, dilation 12 to 36 on a 65x65 map): a tile runs only the taps
    that read the image for some of its pixels. Dilations 2 to 36, padding 0 to the kernel's
    reach, kernels 1 to 5, strides 1 and 2, odd sizes, batch up to 3, 1 or 2 threads."""
    draw = data.draw
    kh, kw = draw(st.integers(1, 5)), draw(st.integers(1, 5))
    dil = (draw(st.integers(2, 36)), draw(st.integers(2, 36)))
    stride = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    pad = (draw(st.integers(0, dil[0] * (kh - 1))), draw(st.integers(0, dil[1] * (kw - 1))))
    reach = dil[0] * (kh - 1) + 1 - 2 * pad[0], dil[1] * (kw - 1) + 1 - 2 * pad[1]
    h = draw(st.integers(max(1, reach[0]), max(1, reach[0]) + 40))
    w = draw(st.integers(max(1, reach[1]), max(1, reach[1]) + 40))
    n, c_in = draw(st.integers(1, 3)), draw(st.integers(1, 20))
    c_out = draw(st.integers(1, microkernel.NR + 5))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    x = rng.standard_normal((n, c_in, h, w)).astype(np.float32)
    wt = (rng.standard_normal((c_out, c_in, kh, kw)) / np.sqrt(c_in * kh * kw)).astype(np.float32)
    bias = rng.standard_normal(c_out).astype(np.float32)
    want = reference(torch, x, wt, bias, None, stride, pad, dil, 1, "relu")
    with numba_threads(draw(st.integers(1, 2))):
        tiling = dict(per_item=draw(st.integers(1, 9)), blocks=draw(st.integers(1, 2)),
                      threads=draw(st.integers(1, 2)), wider=draw(st.integers(0, 3)))  # fmt: skip
        got = run_blocked(x, wt, bias, None, stride, pad, dil, "relu", **tiling)
    np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-5)


@pytest.mark.parametrize(
    "c_in,kernel,dil,pad",
    [(1024, 1, 1, 0), (2048, 1, 1, 1), (1024, 3, 5, 5), (1024, 3, (1, 3), (1, 2))],
)
def test_pixels_4k_apart_are_read_from_a_wider_copy(torch, c_in, kernel, dil, pad):
    """Input channels a multiple of 1024 (pixels 4 KiB apart: ResNet's and DeepLabV3's 1x1
    layers on 1024 and 2048 channels, ASPP) are read from a copy 16 floats wider per pixel,
    with and without padding, and agree with torch."""
    dil = dil if isinstance(dil, tuple) else (dil, dil)
    pad = pad if isinstance(pad, tuple) else (pad, pad)
    assert blocked.pixel_stride(c_in, kernel, dil[1]) == c_in + 16
    assert blocked.pixel_stride(c_in + 8, kernel, dil[1]) == c_in + 8
    assert blocked.pixel_stride(c_in, 3, 1) == c_in  # whole kernel rows: one run
    rng = np.random.default_rng(c_in + kernel)
    x = rng.standard_normal((2, c_in, 11, 13)).astype(np.float32)
    wt = (rng.standard_normal((40, c_in, kernel, kernel)) / np.sqrt(c_in * kernel**2)).astype(
        np.float32
    )
    bias = rng.standard_normal(40).astype(np.float32)
    want = reference(torch, x, wt, bias, None, (1, 1), pad, dil, 1, "relu")
    with numba_threads(2):
        got = run_blocked(x, wt, bias, None, (1, 1), pad, dil, "relu", 4, 1, 2)
    np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-5)


def test_live_taps_hold_every_tap_that_reads_the_image():
    """``_live_range`` against counting: for outputs o0..o1, the kernel positions that read
    inside the image are all in the range it returns, exactly their span for one output row
    or column, one position where none reads the image; strides 1-3, dilations 1-40."""
    live_range = blocked._live_range.py_func
    rng = np.random.default_rng(0)
    for _ in range(3000):
        k, s, d = int(rng.integers(1, 6)), int(rng.integers(1, 4)), int(rng.integers(1, 41))
        p = int(rng.integers(0, d * (k - 1) + 2))
        low = max(1, d * (k - 1) + 1 - 2 * p)
        size = int(rng.integers(low, low + 70))
        out = (size + 2 * p - d * (k - 1) - 1) // s + 1
        o0 = int(rng.integers(0, out))
        o1 = o0 if rng.random() < 0.5 else int(rng.integers(o0, out))
        first = (p + s - 1) // s
        last = blocked._floor_div.py_func(p + size - 1 - (k - 1) * d, s)
        interior = first * 2**32 + last if last >= first else out * 2**32
        k0, k1 = live_range(o0, o1, interior, k, s, d, p, size)
        outputs = range(o0, o1 + 1)
        live = [j for j in range(k) if any(p <= o * s + j * d < p + size for o in outputs)]
        assert 0 <= k0 < k1 <= k and set(live) <= set(range(k0, k1))
        if live and o0 == o1:
            assert (k0, k1) == (live[0], live[-1] + 1), (k, s, d, p, size, o0, o1)
        if not live:
            assert k1 == k0 + 1


def test_both_loop_orders_agree(torch):
    """Small weight blocks run tile by tile through their panels, large ones panel by panel:
    the same numbers either way (both forced on one layer), and the policy picks each."""
    assert blocked.tiles_outer(16, 96, 1) and not blocked.tiles_outer(9 * 512, 512, 1)
    rng = np.random.default_rng(5)
    x = rng.standard_normal((2, 20, 9, 11)).astype(np.float32)
    wt = (rng.standard_normal((70, 20, 3, 3)) / 13).astype(np.float32)
    bias = rng.standard_normal(70).astype(np.float32)
    want = reference(torch, x, wt, bias, None, (1, 1), (1, 1), (1, 1), 1, "relu")
    for outer in (False, True):
        got = run_blocked(x, wt, bias, None, (1, 1), (1, 1), (1, 1), "relu", 3, 2, 2, outer)
        np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-5)


@pytest.mark.parametrize("n", [1, 3])
@pytest.mark.parametrize("size,kernel,stride", [((7, 7), 3, 1), ((7, 7), 1, 1), ((14, 14), 3, 2),
                                                ((5, 9), 3, 1), ((13, 11), 3, 2)])  # fmt: skip
def test_tiles_cross_rows_and_images(torch, n, size, kernel, stride):
    """Small maps (ResNet's 7x7 stage, odd sizes) at batch 1 and 3: tiles of MR real output
    pixels that cross row ends and image ends, only the layer's last tile partial, each
    run of tiles taking several images through a weight panel (runs longer than an image),
    in both loop orders and split over two blocks of panels."""
    rng = np.random.default_rng(n * 100 + size[0])
    c_in, c_out = 24, 2 * microkernel.NR + 3
    x = rng.standard_normal((n, c_in, *size)).astype(np.float32)
    wt = (rng.standard_normal((c_out, c_in, kernel, kernel)) / 15).astype(np.float32)
    bias = rng.standard_normal(c_out).astype(np.float32)
    res = None
    pad = kernel // 2
    want = reference(torch, x, wt, bias, res, (stride,) * 2, (pad,) * 2, (1, 1), 1, "relu")
    _, _, ho, wo = want.shape
    pixels = n * ho * wo
    assert blocked.tile_count((n, ho, wo, c_out)) == -(-pixels // microkernel.MR)
    per_image = -(-ho * wo // microkernel.MR)
    for outer in (False, True):
        for blocks in (1, 2):
            got = run_blocked(x, wt, bias, res, (stride,) * 2, (pad,) * 2, (1, 1), "relu",
                              per_image + 1, blocks, 2, outer)  # fmt: skip
            np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-5)


@pytest.mark.parametrize("rest", range(microkernel.MR))
def test_short_last_tiles_run_as_small_tiles(torch, rest):
    """Layers of 2 MR + ``rest`` output pixels (a row of them, and as many 1x1 images): the
    last tile full where it holds over MR - MR_SMALL pixels, else as one or two small tiles
    of MR_SMALL (``conv_tile_out_small``), with a residual, a partial panel, both loop
    orders; the same numbers as torch either way, and the small count as documented."""
    mr, small = microkernel.MR, microkernel.MR_SMALL
    pixels = 2 * mr + rest
    last = pixels - 2 * mr or mr
    want_small = 0 if last > mr - small else -(-last // small)
    assert blocked._small_tiles(pixels, 2 if rest else 1) == want_small
    rng = np.random.default_rng(rest)
    c_in, c_out = 13, microkernel.NR + 5
    wt = (rng.standard_normal((c_out, c_in, 1, 1)) / 4).astype(np.float32)
    bias = rng.standard_normal(c_out).astype(np.float32)
    for shape in ((1, c_in, 1, pixels), (pixels, c_in, 1, 1)):
        x = rng.standard_normal(shape).astype(np.float32)
        res = rng.standard_normal((shape[0], c_out, 1, shape[3])).astype(np.float32)
        want = reference(torch, x, wt, bias, res, (1, 1), (0, 0), (1, 1), 1, "none")
        want = torch.nn.functional.silu(torch.from_numpy(want)).numpy()
        for outer in (False, True):
            got = run_blocked(x, wt, bias, res, (1, 1), (0, 0), (1, 1), "silu", 2, 1, 2, outer)
            np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-5)


@pytest.mark.parametrize("extra", [1, microkernel.LANES])
@pytest.mark.parametrize("per_item", [1, 2, 3, 5])
def test_narrow_last_panel_runs_pairs_of_tiles(torch, extra, per_item):
    """A last panel of LANES channels or fewer runs through the narrow tile (NARROW_MR
    pixels by one vector): pairs of tiles from each run's first, an odd run's last tile alone
    (through the full or the small tiles), across rows and images, with padding (the pair's
    live taps), a residual, an in-register activation, both loop orders and 1-3 blocks."""
    nr, lanes = microkernel.NR, microkernel.LANES
    assert blocked.has_narrow_panel(nr + extra) and not blocked.has_narrow_panel(nr)
    assert blocked.has_narrow_panel(nr + lanes + 1) is False
    rng = np.random.default_rng(per_item * 10 + extra)
    c_in, c_out = 11, nr + extra
    x = rng.standard_normal((2, c_in, 9, 7)).astype(np.float32)
    wt = (rng.standard_normal((c_out, c_in, 3, 3)) / 10).astype(np.float32)
    bias = rng.standard_normal(c_out).astype(np.float32)
    res = rng.standard_normal((2, c_out, 9, 7)).astype(np.float32)
    want = reference(torch, x, wt, bias, res, (1, 1), (1, 1), (1, 1), 1, "none")
    want = torch.nn.functional.hardswish(torch.from_numpy(want)).numpy()
    for outer in (False, True):
        for blocks in (1, 3):
            got = run_blocked(x, wt, bias, res, (1, 1), (1, 1), (1, 1), "hardswish", per_item,
                              blocks, 2, outer)  # fmt: skip
            np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-5)


#: (input channels, output channels, kernel): input hints, output hints, both, a narrow last
#: panel, a padded 3x3 (output hints only)
STREAM_CASES = [(180, 24, 1), (24, 180, 1), (180, 180, 1), (180, microkernel.NR + 5, 1),
                (8, 180, 3)]  # fmt: skip


@pytest.mark.parametrize("c_in,c_out,kernel", STREAM_CASES)
def test_layers_from_memory_hint_their_streams(torch, monkeypatch, c_in, c_out, kernel):
    """Layers larger than the cache share (forced here: every layer) hint each tile's input
    (1x1, stride 1, read in place) and output (one block of panels) HINT_AHEAD tiles on,
    where a stream is a page or more per tile; the hints stop at the arrays' ends (the last
    tiles, pairs through the narrow tile) and change no number: against torch, with a
    residual, both loop orders, one and two blocks, one and two threads."""
    monkeypatch.setattr(caches, "STREAM_SHARE", 0.0)
    mr = microkernel.MR
    rng = np.random.default_rng(c_in + c_out)
    pad = kernel // 2
    x = rng.standard_normal((2, c_in, 7, 9)).astype(np.float32)
    wt = (rng.standard_normal((c_out, c_in, kernel, kernel)) / np.sqrt(c_in)).astype(np.float32)
    bias = rng.standard_normal(c_out).astype(np.float32)
    res = rng.standard_normal((2, c_out, 7, 9)).astype(np.float32)
    want = reference(torch, x, wt, bias, res, (1, 1), (pad, pad), (1, 1), 1, "none")
    want = torch.nn.functional.relu6(torch.from_numpy(want)).numpy()
    x_nhwc = np.empty((2, 7, 9, c_in), np.float32)
    out = np.empty((2, 7, 9, c_out), np.float32)
    xp = x_nhwc if kernel == 1 else np.empty((2, 9, 11, c_in), np.float32)
    x_hint, out_hint = blocked.stream_hints(x_nhwc, xp, out, kernel, kernel, 1, 1, 1)
    assert x_hint == (mr * c_in * 4 if kernel == 1 and mr * c_in * 4 >= 4096 else 0)
    assert out_hint == (mr * c_out * 4 if mr * c_out * 4 >= 4096 else 0)
    assert blocked.stream_hints(x_nhwc, xp, out, kernel, kernel, 1, 1, 2)[1] == 0
    monkeypatch.setattr(caches, "STREAM_SHARE", 1e9)
    assert blocked.stream_hints(x_nhwc, xp, out, kernel, kernel, 1, 1, 1) == (0, 0)
    monkeypatch.setattr(caches, "STREAM_SHARE", 0.0)
    for threads in (1, 2):
        with numba_threads(threads):
            for outer in (False, True):
                for blocks in (1, 2):
                    got = run_blocked(x, wt, bias, res, (1, 1), (pad, pad), (1, 1), "relu6", 3,
                                      blocks, threads, outer)  # fmt: skip
                    np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-5)


def test_vector_width_follows_the_target():
    """16 lanes where AVX-512 code may be generated (the target Numba compiles for: the
    host's features unless NUMBA_CPU_FEATURES names others), 8 under an AVX2-only target;
    and the tile fits the register file it targets (32 vector registers with AVX-512, 16
    with AVX2): MR x NV accumulators, NV weight vectors and one broadcast input."""
    import llvmlite.binding as llvm

    features = os.environ.get("NUMBA_CPU_FEATURES") or llvm.get_host_cpu_features().flatten()
    avx512 = "+avx512f" in features.split(",")
    assert microkernel.LANES == (16 if avx512 else 8)
    registers = 32 if avx512 else 16
    assert microkernel.MR * microkernel.NV + microkernel.NV + 1 <= registers


def test_resnet18_on_the_micro_kernel_alone(torch, monkeypatch):
    """Every convolution of ResNet-18 (stem, 3x3, strided, 1x1 shortcuts) on the micro-kernel:
    within 1e-5 of PyTorch, and the bench labels say so."""
    from cnnc.runtime.session import Session

    monkeypatch.setattr(autotune, "worth_tuning", lambda *a: False)
    monkeypatch.setattr(autotune, "default_choice", lambda *a: autotune.Choice("blocked", 3, 2))
    net, weights, inputs = _net_and_inputs()
    want = torch_reference.forward(torch, net, weights, inputs)
    session = Session.create(net, weights, algorithm="direct")
    got = session.run(inputs)
    key = next(iter(want))
    scale = float(np.abs(want[key]).max())
    assert float(np.abs(got[key] - want[key]).max()) / scale < 1e-5
    backend = session._executor(1).backend
    convs = [s for s in session.plan.steps if s.kernel == "conv"]
    assert len(convs) == 20
    assert all(backend.choice_of(s).startswith("own ") for s in convs)


@pytest.mark.parametrize("c_in, kh, kw", [(2048, 1, 1), (768, 1, 7), (288, 3, 3)])
def test_long_sums_round_as_closely_as_pytorch(torch, c_in, kh, kw):
    """A sum of thousands of products (a 1x1 layer of 2048 channels, Inception's 7x1 of 768)
    in one float32 accumulator rounds 3-5 times as far from the exact sum as PyTorch's GEMM,
    which sums in blocks; the micro-kernel sums in blocks of SUM_BLOCK products. RMS against
    float64 here, one accumulator -> blocks (PyTorch): 2048 x 1x1 5.8e-7 -> 2.1e-7 (2.1e-7),
    768 x 7x1 8.5e-7 -> 2.2e-7 (1.7e-7), 288 x 3x3 6.0e-7 -> 2.1e-7 (1.7e-7). Gradients care:
    a ReLU whose input sits within the rounding of zero flips, and its gradient with it."""
    rng = np.random.default_rng(c_in)
    x = np.maximum(rng.standard_normal((1, c_in, 9, 9)), 0).astype(np.float32)
    wt = (rng.standard_normal((48, c_in, kh, kw)) / np.sqrt(c_in * kh * kw)).astype(np.float32)
    bias = np.zeros(48, np.float32)
    pad = (kh // 2, kw // 2)
    exact = torch.nn.functional.conv2d(
        torch.from_numpy(x).double(), torch.from_numpy(wt).double(), padding=pad
    ).numpy()
    theirs = reference(torch, x, wt, bias, None, (1, 1), pad, (1, 1), 1, "none")
    ours = run_blocked(x, wt, bias, None, (1, 1), pad, (1, 1), "none", 3, 1, 1)

    def rms(y):
        return float(np.sqrt(np.mean((y - exact) ** 2) / np.mean(exact**2)))

    assert rms(ours) <= 1.5 * rms(theirs), (rms(ours), rms(theirs))
