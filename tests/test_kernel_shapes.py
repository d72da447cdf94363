"""The CPU kernels on any layer shape, against PyTorch.

- The layers that crashed ``cnnc run`` (a tap-offset array that Numba freed while the
  micro-kernel's tiles still read it; big kernels made the reuse of the freed block likely),
  each run by the command line in a process of its own and compared with torch.
- The checked mode (``CNNC_CHECK_BOUNDS=1``, bounds.py): a kernel call whose extents leave
  their arrays is stopped before it runs and reported, for the micro-kernel, the depthwise
  tiles and their patch copies, Winograd's products and sgemm.
- The depthwise kernel on random shapes (kernels 1-13, strides 1-4, padding 0 to the kernel,
  dilation 1-3, 1 and 2 threads), also with 8-lane (AVX2) code.
- A bounded fuzz test: a few hundred random layers (kernel_cases.py), in batches, each batch in
  a process of its own (half of them generating AVX2 code), so that a crash fails this test
  naming the layer instead of killing the test runner.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kernel_cases import AVX2, case_data, numba_threads, random_case

import torch_reference
from cnnc.compiler.ops import OPS
from cnnc.runtime.backends.cpu import blas, blocked, bounds, caches, depthwise, winograd
from cnnc.runtime.backends.cpu.microkernel import DW_CH, LANES, MR
from conftest import ROOT

TESTS = Path(__file__).resolve().parent


def _env(tmp_path: Path, **extra) -> dict:
    """The test's environment with an empty tuning cache (runs use the untuned default, as on
    a fresh install) and this process's compiled kernels."""
    from cnnc.runtime.backends.cpu.kernel_cache import kernel_cache_dir

    return {
        **os.environ,
        "XDG_CACHE_HOME": str(tmp_path / "cache"),
        "NUMBA_CACHE_DIR": os.environ.get("NUMBA_CACHE_DIR") or str(kernel_cache_dir()),
        **extra,
    }


CRASHED = [  # (input, layer, threads, algorithm): each died with SIGSEGV under auto
    ("3x40x40", "conv(8, k=11)", 2, "auto"),
    ("16x40x40", "conv(8, k=10)", 2, "auto"),
    ("5x40x40", "conv(7, k=13, d=2)", 1, "auto"),
    ("3x224x224", "conv(96, k=11, s=4)", 2, "auto"),  # AlexNet's first layer
    ("3x40x40", "conv(8, k=11)", 2, "blas"),  # the way around the micro-kernel
]


@pytest.mark.parametrize("shape,layer,threads,algorithm", CRASHED)
def test_layers_that_crashed_the_micro_kernel(torch, tmp_path, shape, layer, threads, algorithm):
    """``cnnc run`` on each, by default on the micro-kernel, against torch."""
    spec = tmp_path / "t.cnn"
    spec.write_text(f"network t(x: {shape}) {{ return x | {layer} }}\n")
    c, h, w = (int(v) for v in shape.split("x"))
    x = np.random.default_rng(0).standard_normal((1, c, h, w)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    env = _env(tmp_path, NUMBA_NUM_THREADS=str(threads))
    run = subprocess.run(
        [sys.executable, "-m", "cnnc", "run", str(spec), "--input", str(tmp_path / "x.npy"),
         "--out", str(tmp_path / "y.npy"), "--save-weights", str(tmp_path / "w.npz"),
         "--algorithm", algorithm],
        capture_output=True, text=True, cwd=tmp_path, env=env, timeout=600,
    )  # fmt: skip
    assert run.returncode == 0, f"exit {run.returncode}\n{run.stderr[-3000:]}"
    weights = np.load(tmp_path / "w.npz")
    (wkey,) = [k for k in weights.files if k.endswith(".weight")]
    (bkey,) = [k for k in weights.files if k.endswith(".bias")]
    args = {"k": 1, "s": 1, "d": 1}
    for part in layer[layer.index(",") + 1 : -1].split(","):
        name, value = part.strip().split("=")
        args[name] = int(value)
    want = torch.nn.functional.conv2d(
        torch.from_numpy(x), torch.from_numpy(weights[wkey]), torch.from_numpy(weights[bkey]),
        args["s"], 0, args["d"],
    ).numpy()  # fmt: skip
    got = np.load(tmp_path / "y.npy")
    np.testing.assert_allclose(got, want, rtol=2e-4, atol=2e-4 * float(np.abs(want).max()))


@pytest.fixture
def checked():
    """Checked mode on for the test, the fault record clear before and after."""
    was = bounds.checked()
    bounds.set_checked(True)
    yield
    bounds.set_checked(was)


def _blocked_args(x_nhwc, c_out, bias, out, kh=3):
    rng = np.random.default_rng(1)
    c_in = x_nhwc.shape[3]
    wmat = rng.standard_normal((1, kh * kh * c_in, c_out)).astype(np.float32)
    return (
        x_nhwc, x_nhwc, blocked.pack_panels(wmat), bias, np.empty((0, 0, 0, 0), np.float32),
        out, np.zeros((2, blocked.SCRATCH_FLOATS), np.float32), kh, kh, 1, 1, 0, 0, 1, 1, 0,
        np.float32(0), np.float32(0), 4, 1, False,
    )  # fmt: skip


def test_checked_mode_stops_a_tile_reading_past_the_bias(checked):
    x = np.ones((1, 9, 9, 5), np.float32)
    out = np.full((1, 7, 7, 40), np.nan, np.float32)
    with pytest.raises(bounds.BoundsError, match=r"micro-kernel tile .* of its bias, which holds"):
        blocked.blocked_conv(*_blocked_args(x, 40, np.zeros(3, np.float32), out))
    assert bounds.RECORD[1] == 0  # reported once, then cleared


def test_checked_mode_stops_a_tile_reading_past_the_input(checked):
    x = np.ones((1, 9, 9, 5), np.float32)
    out = np.full((1, 12, 7, 8), np.nan, np.float32)  # 12 rows: more than a 9-row input gives
    with pytest.raises(bounds.BoundsError, match="micro-kernel tile .* of its input"):
        blocked.blocked_conv(*_blocked_args(x, 8, np.zeros(8, np.float32), out))


def test_checked_mode_passes_a_correct_call_and_changes_nothing_when_off(torch, checked):
    x = np.random.default_rng(2).standard_normal((1, 9, 9, 5)).astype(np.float32)
    out = np.full((1, 7, 7, 40), np.nan, np.float32)
    args = _blocked_args(x, 40, np.zeros(40, np.float32), out)
    blocked.blocked_conv(*args)
    checked_out = out.copy()
    bounds.set_checked(False)
    out[:] = np.nan
    blocked.blocked_conv(*args)
    assert bounds.RECORD.tolist() == [0] * 8
    wt = args[2][:, :, :].transpose(1, 0, 2).reshape(3, 3, 5, -1)[..., :40]
    want = torch.nn.functional.conv2d(
        torch.from_numpy(x.transpose(0, 3, 1, 2)), torch.from_numpy(wt.transpose(3, 2, 0, 1).copy())
    ).numpy()
    np.testing.assert_allclose(out.transpose(0, 3, 1, 2), want, rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(out, checked_out)


def test_checked_mode_stops_sgemm_reading_past_a(checked):
    a, b = np.ones(10, np.float32), np.ones((4, 3), np.float32)
    c = np.full((3, 3), 7.0, np.float32)
    blas.gemm(3, 3, 4, a, 0, 4, b, 0, 3, c, 0, 3, 0.0)  # A needs 12 floats: 10 given
    assert (c == 7.0).all()  # not called
    with pytest.raises(bounds.BoundsError, match="sgemm would touch bytes 0..48 of its A, which"):
        bounds.raise_fault()
    blas.gemm(2, 3, 4, a, 0, 4, b, 0, 3, c, 0, 3, 0.0)
    np.testing.assert_array_equal(c[:2], np.full((2, 3), 4.0))
    bounds.raise_fault()  # nothing recorded


def _dw_call(x, c, bias, kh=3, pad=0, patch_floats=None):
    n, h, w, _ = x.shape
    out = np.full((n, h + 2 * pad - kh + 1, w + 2 * pad - kh + 1, c), np.nan, np.float32)
    floats = depthwise.dw_scratch_floats(kh, kh, 1, 1) if patch_floats is None else patch_floats
    scratch = np.zeros((2, floats), np.float32)
    wts = np.ones((kh, kh, c), np.float32)
    depthwise.dwconv(x, wts, bias, np.empty((0, 0, 0, 0), np.float32), out, scratch, kh, kh, 1,
                     1, pad, pad, 1, 1, np.float32(-np.inf), np.float32(np.inf), 0, np.float32(0),
                     depthwise.whole_rows(x, out), 1, 1, 0)  # fmt: skip
    return out


def test_checked_mode_stops_depthwise_tiles_and_patch_copies(checked):
    x = np.ones((1, 20, 30, 20), np.float32)
    _dw_call(x, 20, np.zeros(20, np.float32))
    bounds.raise_fault()  # a correct call: nothing recorded
    _dw_call(x, 20, np.zeros(5, np.float32))
    with pytest.raises(bounds.BoundsError, match="depthwise tile .* of its bias"):
        bounds.raise_fault()
    # a row narrower than a tile reads a padded copy of its span: too small a scratch row
    x = np.ones((1, 20, 4, 20), np.float32)
    _dw_call(x, 20, np.zeros(20, np.float32), pad=1, patch_floats=depthwise.ROW_FLOATS + 3 * DW_CH)
    with pytest.raises(bounds.BoundsError, match="depthwise patch copy .* of its patch buffer"):
        bounds.raise_fault()


def test_checked_mode_stops_winograd_products_reading_past_the_weights(checked):
    c_in, c_out, m = 8, 40, 2
    wmat = np.ones((1, 9 * 4, c_out), np.float32)  # weights of 4 input channels, not 8
    u = winograd.transform_weights(wmat, m)
    x = np.ones((1, 6, 6, c_in), np.float32)
    out = np.full((1, 4, 4, c_out), np.nan, np.float32)
    bt, at = winograd.matrices(m)
    scratch = np.zeros((2, winograd.scratch_floats(m, 4, c_in, c_out)), np.float32)
    winograd.winograd_conv(x, u, np.zeros(c_out, np.float32), np.empty((0, 0, 0, 0), np.float32),
                           out, scratch, 0, 0, bt, at, 0, np.float32(0), np.float32(0), 4,
                           1, 1, 1)  # fmt: skip
    with pytest.raises(bounds.BoundsError, match="micro-kernel tile .* of its weights"):
        bounds.raise_fault()


def test_checked_mode_follows_the_environment(tmp_path):
    code = "from cnnc.runtime.backends.cpu import bounds; print(bounds.checked())"
    for value, want in (("1", "True"), ("0", "False"), ("", "False")):
        env = {**_env(tmp_path), "CNNC_CHECK_BOUNDS": value}
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
        assert out.stdout.strip() == want, out.stderr[-2000:]


ACTS = {"none": lambda f, y: y, "relu6": lambda f, y: f.relu6(y), "silu": lambda f, y: f.silu(y)}


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.data())
def test_depthwise_matches_torch(torch, data):
    """The depthwise tiles (in place and through border patches) on any window, 1 or 2
    threads, channel counts around the vector width."""
    draw = data.draw
    kh, kw = draw(st.integers(1, 13)), draw(st.integers(1, 13))
    sh, sw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    dh, dw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    ph, pw = draw(st.integers(0, kh)), draw(st.integers(0, kw))
    h = draw(st.integers(max(1, dh * (kh - 1) + 1 - 2 * ph), 40))
    w = draw(st.integers(max(1, dw * (kw - 1) + 1 - 2 * pw), 40))
    window = {"kh": kh, "kw": kw, "sh": sh, "sw": sw, "ph": ph, "pw": pw, "dh": dh, "dw": dw}
    check_depthwise(
        torch, window, h, w, c=draw(st.integers(1, 2 * DW_CH + 3)), n=draw(st.integers(1, 2)),
        act=draw(st.sampled_from(sorted(ACTS))), seed=draw(st.integers(0, 2**16)),
        residual=draw(st.booleans()), threads=draw(st.integers(1, 2)),
        hints=draw(st.booleans()),
    )  # fmt: skip


@pytest.mark.parametrize("k,s", [(3, 1), (3, 2), (5, 1), (5, 2)])
@pytest.mark.parametrize("residual", [False, True])
def test_depthwise_full_tiles_match_torch(torch, k, s, residual):
    """The windows with a tile of their own (``dw_slide_*``: 3x3 and 5x5, stride 1 and 2),
    on rows of several full tiles and a partial one (in place, the last moved back, or with a
    residual from a padded copy), of one tile exactly, and narrower than a tile (a padded
    copy), both threads; channels of a full block (DW_CH: plain loads) and of partial ones,
    past a vector and short of one (masked loads)."""
    widths = ((1, 2 * MR * s + 5, DW_CH + LANES + 3), (2, 3 * MR * s, 2 * LANES), (1, 7, LANES - 1),
              (2, MR * s + 1, LANES + 1), (1, MR * s, DW_CH))  # fmt: skip
    for i, (threads, w, c) in enumerate(widths):
        window = {"kh": k, "kw": k, "sh": s, "sw": s, "ph": k // 2, "pw": k // 2, "dh": 1, "dw": 1}
        check_depthwise(torch, window, 9, w, c, n=2, act="relu6", seed=k * s, residual=residual,
                        threads=threads, hints=i % 2 == 1)  # fmt: skip


@pytest.mark.parametrize("s", [1, 2])
@pytest.mark.parametrize("pad", [0, 1, 2, 3])
def test_depthwise_full_tiles_with_any_padding(torch, s, pad):
    """3x3 tiles read a row's first and last columns in place where no more than DW_EDGE
    columns of their span lie outside the image (pads 0 to 2), else from a padded copy (3);
    with and without a residual (its short last tile); small stride-1 maps through a padded
    copy of the whole image (``depthwise._flat_image``), larger ones row by row."""
    window = {"kh": 3, "kw": 3, "sh": s, "sw": s, "ph": pad, "pw": pad, "dh": 1, "dw": 1}
    w = MR * s + 3
    for h in (6, 60):
        wo = w + 2 * pad - 2
        flat = depthwise.flat_patch_pixels(h + 2 * pad - 2, wo, 3, 3, s, s, 1, 1, True)
        if s == 2 or h == 60 or pad == 0:  # (pads 1 to 3 differ with the lane width)
            assert (flat > 0) == (s == 1 and h == 6)
        for residual in (False, True):
            check_depthwise(torch, window, h, w, DW_CH, n=1, act="relu6", seed=pad,
                            residual=residual, threads=2)  # fmt: skip


def test_depthwise_flat_patch_with_row_dilation(torch):
    """Small stride-1 maps through the flat patch (``depthwise._flat_image``) with kernel rows
    ``dh`` apart (PyTorch's ``dilation=(dh, 1)``): a kernel row is ``dh`` padded rows on."""
    for k, dh, ph, pw, h, residual in ((3, 2, 2, 1, 8, True), (3, 2, 0, 0, 7, False)):
        w = MR + 3
        window = {"kh": k, "kw": k, "sh": 1, "sw": 1, "ph": ph, "pw": pw, "dh": dh, "dw": 1}
        ho, wo = h + 2 * ph - (k - 1) * dh, w + 2 * pw - (k - 1)
        assert depthwise.flat_patch_pixels(ho, wo, k, k, 1, 1, dh, 1, True) > 0
        check_depthwise(torch, window, h, w, DW_CH + 5, n=2, act="relu6", seed=k + dh,
                        residual=residual, threads=2)  # fmt: skip


def check_depthwise(torch, window, h, w, c, n, act, seed, residual, threads, hints=False):
    """``depthwise.dwconv`` against torch's ``conv2d`` on one layer (``window``: its kernel,
    strides, padding and dilation); ``hints``: with the input hints of layers larger than
    the cache (``caches.from_memory``), whatever this layer's size."""
    kh, kw = window["kh"], window["kw"]
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, c, h, w)).astype(np.float32)
    wt = (rng.standard_normal((c, 1, kh, kw)) / np.sqrt(kh * kw)).astype(np.float32)
    bias = rng.standard_normal(c).astype(np.float32)
    f = torch.nn.functional
    stride, padding = (window["sh"], window["sw"]), (window["ph"], window["pw"])
    dilation = (window["dh"], window["dw"])
    y = f.conv2d(*(torch.from_numpy(a) for a in (x, wt, bias)), stride, padding, dilation, c)
    res = rng.standard_normal(y.shape).astype(np.float32) if residual else None
    if res is not None:
        y = y + torch.from_numpy(res)
    want = ACTS[act](f, y).numpy()
    x_nhwc = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
    out = np.full((n, *want.shape[2:], c), np.nan, np.float32)
    res_nhwc = (
        np.ascontiguousarray(res.transpose(0, 2, 3, 1))
        if res is not None
        else np.empty((0, 0, 0, 0), np.float32)
    )
    attrs = {"act": OPS[act].code if act in OPS else 0, "alpha": 0.0, "beta": 0.0, "mult": 1}
    attrs.update(window)
    arrays = {"w": np.ascontiguousarray(wt[:, 0].transpose(1, 2, 0)), "b": bias}

    class Backend:  # what dwconv_call asks of the CPU backend
        algorithm = "direct"

        def __init__(self):
            self.threads = threads

        def scratch(self, floats):
            return np.full((threads, floats), np.nan, np.float32)

    share = caches.STREAM_SHARE
    caches.STREAM_SHARE = 0.0 if hints else share
    try:
        call = depthwise.dwconv_call(Backend(), attrs, arrays, x_nhwc, res_nhwc, out)
    finally:
        caches.STREAM_SHARE = share
    kernel, args, after = call
    assert kernel is depthwise.dwconv
    assert args[-2] == int(hints)  # small layers hint only where told to
    with numba_threads(threads):
        kernel(*args)
    if after is not None:
        depthwise.activation_pass(*after)
    bounds.raise_fault("the depthwise test")
    np.testing.assert_allclose(out.transpose(0, 3, 1, 2), want, rtol=2e-4, atol=2e-4)


def test_layers_over_a_share_of_the_cache_stream_from_memory():
    """Layers over a quarter of the last-level cache hint what they read; sysfs sizes parse."""
    llc = caches.last_level_cache_bytes()
    assert llc >= 1 << 20
    assert caches.l2_cache_bytes() >= 64 << 10
    assert caches.from_memory(llc) == 1
    assert caches.from_memory(llc // 8) == 0
    assert caches.cache_size_bytes("32768K\n") == 32 << 20
    assert caches.cache_size_bytes("2M") == 2 << 20
    assert caches.cache_size_bytes("512") == 512
    with pytest.raises(ValueError):
        caches.cache_size_bytes("K")


def test_depthwise_under_avx2_code_generation():
    """``test_depthwise_matches_torch`` and ``test_depthwise_full_tiles_match_torch`` again
    with 8-lane code (Zen 3 has no AVX-512), in a process of its own."""
    tests = [
        f"{TESTS / 'test_kernel_shapes.py'}::{name}"
        for name in (
            "test_depthwise_matches_torch",
            "test_depthwise_full_tiles_match_torch",
            "test_depthwise_full_tiles_with_any_padding",
        )
    ]
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *tests],
        capture_output=True, text=True, cwd=ROOT, env={**os.environ, **AVX2},
    )  # fmt: skip
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    assert re.search(r"(?<!\d)17 passed", out.stdout), out.stdout[-2000:]


#: Random layers the fuzz test runs (CNNC_FUZZ_SHAPES), per process, and the seed of the
#: layers (CNNC_FUZZ_SEED; random unless given, and named in any failure).
FUZZ_SHAPES = int(os.environ.get("CNNC_FUZZ_SHAPES", "300"))
FUZZ_BATCH = 30


def _run_batch(cases_path: Path, count: int, first: int, out_dir: Path, env: dict) -> dict:
    """Run cases ``first``..``first + count - 1`` of the file in worker processes: a worker
    that dies or hangs fails the case it had started, and the next one goes on after it.
    Returns {case: why it failed}."""
    failed = {}
    start, end = first, first + count
    while start < end:
        try:
            run = subprocess.run(
                [sys.executable, str(TESTS / "kernel_cases.py"), str(cases_path), str(out_dir),
                 str(start), str(end)],
                capture_output=True, text=True, env=env, timeout=300,
            )  # fmt: skip
            stdout, stderr, code = run.stdout, run.stderr, run.returncode
        except subprocess.TimeoutExpired as exc:
            stdout, stderr, code = (exc.stdout or b"").decode(), (exc.stderr or b"").decode(), None
        lines = [line.split() for line in stdout.splitlines()]
        done = {int(words[1]) for words in lines if words[:1] == ["done"]}
        started = [int(words[1]) for words in lines if words[:1] == ["start"]]
        if code == 0 and len(done) == end - start:
            break
        culprit = started[-1] if started and started[-1] not in done else start
        why = "hung (300 s)" if code is None else f"exit {code}"
        failed[culprit] = f"{why}: {stderr.strip()[-1500:]}"
        start = culprit + 1
    return failed


def test_random_layers_in_processes_of_their_own(torch, tmp_path):
    """A few hundred random layers (kernel_cases.random_case) through ``cnnc.run`` under every
    algorithm policy, 1 or 2 threads, half of the processes with AVX2 code: none may crash,
    hang or differ from torch."""
    seed = int(os.environ.get("CNNC_FUZZ_SEED") or secrets.randbits(32))
    rng = np.random.default_rng(seed)
    cases = [random_case(rng) for _ in range(FUZZ_SHAPES)]
    cases_path = tmp_path / "cases.json"
    cases_path.write_text(json.dumps(cases))
    failed = {}
    for b, first in enumerate(range(0, len(cases), FUZZ_BATCH)):
        env = _env(tmp_path, **(AVX2 if b % 2 else {}))
        count = min(FUZZ_BATCH, len(cases) - first)
        failed.update(_run_batch(cases_path, count, first, tmp_path, env))
    for i, case in enumerate(cases):
        if i in failed:
            continue
        net, weights, inputs = case_data(case)
        want = next(iter(torch_reference.forward(torch, net, weights, inputs).values()))
        got = np.load(tmp_path / f"{i}.npy")
        scale = max(1.0, float(np.abs(want).max()))
        error = float(np.abs(got - want).max()) / scale if got.shape == want.shape else np.inf
        if not error <= 2e-4:
            failed[i] = f"max error {error:.3g} of the largest output"
    report = [
        f"case {i} ({'AVX2' if (i // FUZZ_BATCH) % 2 else 'host'} code, {cases[i]['algorithm']}, "
        f"{cases[i]['threads']} threads, batch {cases[i]['batch']}): {why}\n{cases[i]['spec']}"
        for i, why in sorted(failed.items())
    ]
    assert not report, f"CNNC_FUZZ_SEED={seed}: {len(report)} failed\n" + "\n".join(report[:10])


MBCONV_SE = """
network t(x: 24x19x17) {
    y = x | conv(72, k=1, bias=false) | bn | silu
    y = y | dwconv(k=5, s=2, p=2, bias=false) | bn | silu
    g = y | gap | conv(6, k=1) | silu | conv(72, k=1) | sigmoid
    y = mul(y, g) | conv(24, k=1, bias=false) | bn
    return y | conv(16, k=3, p=1, g=2) | conv(40, k=7, p=3) | relu
}
"""


def test_blas_policy_keeps_off_the_micro_kernel(torch, monkeypatch):
    """``--algorithm blas``: every convolution of a network with 1x1, 7x7, grouped, depthwise
    and SE-gated layers on BLAS or plain loops (the micro-kernel's entry points fail if
    called), the same outputs as torch."""
    import cnnc
    from cnnc.runtime.session import Session

    def refused(*args, **kwargs):
        raise AssertionError("the micro-kernel ran under --algorithm blas")

    for module, name in ((blocked, "blocked_kernel"), (blocked, "blocked_call"),
                         (depthwise, "dwconv"), (winograd, "winograd_conv")):  # fmt: skip
        monkeypatch.setattr(module, name, refused)
    net = cnnc.check(MBCONV_SE).networks[0]
    weights = torch_reference.random_weights(net, 3)
    x = np.random.default_rng(3).standard_normal((2, 24, 19, 17)).astype(np.float32)
    want = next(iter(torch_reference.forward(torch, net, weights, {"x": x}).values()))
    for optimize in (True, False):
        session = Session.create(net, weights, optimize=optimize, algorithm="blas")
        got = next(iter(session.run({"x": x}).values()))
        np.testing.assert_allclose(got, want, rtol=2e-4, atol=2e-4)
        backend = session._executor(2).backend
        labels = [backend.choice_of(s) for s in session.plan.steps if s.kernel == "conv"]
        labels = [label for label in labels if label]  # SE's 1x1 layers on 1x1 maps: loops
        assert len(labels) >= 4 and all(label.startswith("blas ") for label in labels), labels
        assert any(label.endswith(" gated") for label in labels) == optimize, labels
