"""Winograd F(2x2, 3x3) and F(4x4, 3x3) on the CPU against torch's conv2d, the autotuner's
cache, and ``--algorithm`` (run, bench, tune, and the API's ``algorithm=``).

The kernel runs on random layers with odd sizes (tiles cut by the image edge, runs of tiles
that leave a remainder, one to three threads' worth of scratch), residuals and activations.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kernel_cases import numba_threads

import cnnc
import torch_reference
from cnnc.compiler.ops import OPS
from cnnc.runtime.backends.cpu import autotune, winograd
from conftest import ROOT, SPECS, run_counts

ACTS = ["none", "relu", "leaky_relu", "sigmoid"]


def run_winograd(x, wt, bias, res, pad, act, m, per_item, threads, k_blocks=1, dil=(1, 1)):
    """cnnc's Winograd kernel on NCHW arrays with a torch-layout weight; returns NCHW."""
    n, c_in, h, w = x.shape
    c_out = wt.shape[0]
    ph, pw = pad if isinstance(pad, tuple) else (pad, pad)
    ho, wo = h + 2 * ph - 2 * dil[0], w + 2 * pw - 2 * dil[1]
    wmat = wt.transpose(2, 3, 1, 0).reshape(1, 9 * c_in, c_out)
    out = np.full((n, ho, wo, c_out), np.nan, np.float32)
    res_nhwc = (
        np.ascontiguousarray(res.transpose(0, 2, 3, 1))
        if res is not None
        else np.empty((0, 0, 0, 0), np.float32)
    )
    bt, at = winograd.matrices(m)
    floats = winograd.scratch_floats(m, per_item, c_in, c_out, k_blocks)
    winograd.winograd_conv(
        np.ascontiguousarray(x.transpose(0, 2, 3, 1)),
        winograd.transform_weights(np.ascontiguousarray(wmat), m),
        bias,
        res_nhwc,
        out,
        np.full((threads, floats + 1), np.nan, np.float32),
        ph,
        pw,
        bt,
        at,
        OPS[act].code if act in OPS else 0,
        np.float32(0.1),
        np.float32(0.0),
        per_item,
        k_blocks,
        *dil,
    )
    return out.transpose(0, 3, 1, 2)


def reference(torch, x, wt, bias, res, pad, act, dil=1):
    f = torch.nn.functional
    t = torch.from_numpy
    y = f.conv2d(t(x), t(wt), t(bias), 1, pad, dil)
    if res is not None:
        y = y + torch.from_numpy(res)
    return {
        "none": y,
        "relu": f.relu(y),
        "leaky_relu": f.leaky_relu(y, 0.1),
        "sigmoid": torch.sigmoid(y),
    }[act].numpy()


def _random_layer(draw, batch, c_in, c_out, size, out_size):
    """A 3x3 layer's input, weights (scaled to keep outputs near 1), bias and, drawn or not, a
    residual of the output's shape, from a drawn seed."""
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    x = rng.standard_normal((batch, c_in, *size)).astype(np.float32)
    wt = (rng.standard_normal((c_out, c_in, 3, 3)) / np.sqrt(9 * c_in)).astype(np.float32)
    bias = rng.standard_normal(c_out).astype(np.float32)
    with_res = draw(st.booleans())
    res = rng.standard_normal((batch, c_out, *out_size)).astype(np.float32) if with_res else None
    return x, wt, bias, res


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.data())
def test_winograd_matches_torch(torch, data):
    draw = data.draw
    m = draw(st.sampled_from([2, 4]))
    c_in, c_out = draw(st.integers(1, 40)), draw(st.integers(1, 40))
    pad = draw(st.integers(0, 3))  # 0 to the kernel
    h, w = draw(st.integers(max(1, 3 - 2 * pad), 40)), draw(st.integers(3, 40))
    batch = draw(st.integers(1, 2))
    per_item, threads = draw(st.integers(1, 9)), draw(st.integers(1, 3))
    pool = draw(st.integers(1, 2))  # Numba's threads
    k_blocks = draw(st.integers(1, min(c_out, 5)))
    act = draw(st.sampled_from(ACTS))
    x, wt, bias, res = _random_layer(
        draw, batch, c_in, c_out, (h, w), (h + 2 * pad - 2, w + 2 * pad - 2)
    )
    with numba_threads(pool):
        got = run_winograd(x, wt, bias, res, pad, act, m, per_item, threads, k_blocks)
    want = reference(torch, x, wt, bias, res, pad, act)
    np.testing.assert_allclose(got, want, rtol=2e-4, atol=2e-4)


@pytest.mark.parametrize("per_item", [4, 13, 16, 21, 25])
def test_runs_of_tiles_end_in_small_tiles(torch, per_item):
    """Runs of ``per_item`` Winograd tiles whose last MR - MR_SMALL or fewer go through the
    small tile (``conv_tile_small``): a 14x14 map is 16 F(4x4) tiles, 12 + 4 at batch 1."""
    rng = np.random.default_rng(per_item)
    x = rng.standard_normal((2, 20, 14, 14)).astype(np.float32)
    wt = (rng.standard_normal((37, 20, 3, 3)) / 13).astype(np.float32)
    bias = rng.standard_normal(37).astype(np.float32)
    want = reference(torch, x, wt, bias, None, 1, "relu")
    got = run_winograd(x, wt, bias, None, 1, "relu", 4, per_item, 2)
    np.testing.assert_allclose(got, want, rtol=2e-4, atol=2e-4)


@settings(max_examples=50, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.data())
def test_dilated_winograd_matches_torch(torch, data):
    """Dilated layers (DeepLabV3's 2 and 4 in the backbone, 12, 24 and 36 in ASPP): dilations
    2 to 36 along each axis, padding 0 to the dilation, odd sizes (sub-images of unequal
    sizes, dilations past the map's size), batch up to 3, 1 or 2 threads."""
    draw = data.draw
    m = draw(st.sampled_from([2, 4]))
    dil = draw(st.integers(2, 36)), draw(st.integers(2, 36))
    pad = draw(st.integers(0, dil[0])), draw(st.integers(0, dil[1]))
    h = draw(st.integers(max(1, 2 * dil[0] + 1 - 2 * pad[0]), 2 * dil[0] + 30))
    w = draw(st.integers(max(1, 2 * dil[1] + 1 - 2 * pad[1]), 2 * dil[1] + 30))
    c_in, c_out = draw(st.integers(1, 24)), draw(st.integers(1, 40))
    batch = draw(st.integers(1, 3))
    per_item, threads = draw(st.integers(1, 9)), draw(st.integers(1, 3))
    k_blocks = draw(st.integers(1, min(c_out, 3)))
    act = draw(st.sampled_from(ACTS))
    x, wt, bias, res = _random_layer(
        draw, batch, c_in, c_out, (h, w), (h + 2 * pad[0] - 2 * dil[0], w + 2 * pad[1] - 2 * dil[1])
    )
    with numba_threads(draw(st.integers(1, 2))):
        got = run_winograd(x, wt, bias, res, pad, act, m, per_item, threads, k_blocks, dil)
    want = reference(torch, x, wt, bias, res, pad, act, dil)
    np.testing.assert_allclose(got, want, rtol=2e-4, atol=2e-4)


def test_dilated_winograd_tiles_each_sub_image():
    """The tiles of a dilated layer: each of the d_h x d_w sub-images that has outputs gets
    the largest one's tiles (65x65 with dilation 4: 17 rows at most, 5 tiles of F4)."""
    assert winograd.tile_count(1, 65, 65, 4, 4, 4) == 16 * 5 * 5
    assert winograd.tile_count(2, 65, 65, 2, 2, 2) == 2 * 4 * 17 * 17
    assert winograd.tile_count(1, 5, 7, 2, 36, 36) == 5 * 7  # one pixel per sub-image
    assert winograd.tile_count(1, 9, 9, 4) == 9 == winograd.tile_count(1, 9, 9, 4, 1, 1)
    assert winograd.applies(3, 3, 1, 1, 12, 12, 1) and not winograd.applies(3, 3, 2, 2, 2, 2, 1)


@pytest.mark.parametrize("m,dil", [(2, 1), (4, 3)])
def test_1024_input_channels_keep_their_tiles_apart(torch, m, dil):
    """1024 input channels (4 KiB per tile: the scratch rows are 16 floats wider,
    ``winograd.row_stride``), dilated or not, against torch."""
    assert winograd.row_stride(1024) == 1040 and winograd.row_stride(1000) == 1000
    rng = np.random.default_rng(m)
    x = rng.standard_normal((2, 1024, 9, 11)).astype(np.float32)
    wt = (rng.standard_normal((24, 1024, 3, 3)) / 96).astype(np.float32)
    bias = rng.standard_normal(24).astype(np.float32)
    with numba_threads(2):
        got = run_winograd(x, wt, bias, None, dil, "relu", m, 5, 2, 1, (dil, dil))
    want = reference(torch, x, wt, bias, None, dil, "relu", dil)
    np.testing.assert_allclose(got, want, rtol=2e-4, atol=2e-4)


def test_winograd_error_grows_with_the_tile_and_stays_small():
    """Error against float64 direct convolution (the numbers in docs/performance.md): a
    ResNet-like layer, 128 channels at 28x28, unit-variance input, He-scaled weights."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 128, 28, 28)).astype(np.float32)
    wt = (rng.standard_normal((128, 128, 3, 3)) * np.sqrt(2 / (9 * 128))).astype(np.float32)
    bias = np.zeros(128, np.float32)
    xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (1, 1), (1, 1)))
    exact = sum(
        np.einsum("nchw,oc->nohw", xp[:, :, i : i + 28, j : j + 28], wt[:, :, i, j])
        for i in range(3)
        for j in range(3)
    )
    errors = {}
    for m in (2, 4):
        got = run_winograd(x, wt, bias, None, 1, "none", m, 16, 2)
        errors[m] = float(np.abs(got - exact).max() / np.abs(exact).max())
    assert errors[2] < errors[4] < 2e-5, errors


def test_weight_transform_is_exact_in_float64():
    """G g G^T followed by the input and output transforms gives back direct correlation."""
    rng = np.random.default_rng(1)
    for m, (bt, g, at) in winograd.TRANSFORMS.items():
        d, k = rng.standard_normal((m + 2, m + 2)), rng.standard_normal((3, 3))
        y = at @ ((g @ k @ g.T) * (bt @ d @ bt.T)) @ at.T
        want = [[(d[i : i + 3, j : j + 3] * k).sum() for j in range(m)] for i in range(m)]
        np.testing.assert_allclose(y, want, atol=1e-12)


SMALL = """network small(x: 32x56x56) {
    y = x | conv(64, k=3, p=same) | relu
    return y | conv(64, k=3, p=same)
}
"""


def _net_and_inputs(name="resnet18", batch=1):
    net = cnnc.load(SPECS / "resnet.cnn", network=name)
    weights = torch_reference.random_weights(net, seed=1)
    rng = np.random.default_rng(2)
    inputs = {
        n: rng.standard_normal((batch, *layer.shape)).astype(np.float32)
        for n, layer in net.inputs.items()
    }
    return net, weights, inputs


@pytest.mark.parametrize("algorithm", ["winograd", "direct"])
def test_resnet18_within_1e4_of_torch(torch, algorithm):
    """Winograd wherever it applies, and the exact path, both within 1e-4 of PyTorch."""
    from cnnc.runtime.session import Session

    net, weights, inputs = _net_and_inputs()
    want = torch_reference.forward(torch, net, weights, inputs)
    session = Session.create(net, weights, algorithm=algorithm)
    got = session.run(inputs)
    key = next(iter(want))
    scale = float(np.abs(want[key]).max())
    assert float(np.abs(got[key] - want[key]).max()) / scale < 1e-4
    backend = session._executor(1).backend
    convs = [s for s in session.plan.steps if s.kernel == "conv"]
    winograds = [s for s in convs if backend.choice_of(s).startswith("winograd")]
    if algorithm == "direct":
        assert not winograds and all(backend.choice_of(s) for s in convs)
    else:  # every stride-1 3x3 layer of ResNet-18 (13), none else
        assert len(winograds) == 13
        assert all(s.attrs["kh"] == 3 and s.attrs["sh"] == 1 for s in winograds)
    assert cnnc.run(net, inputs, weights, algorithm="direct")[key].shape == want[key].shape


def test_the_suite_runs_the_default_policy_on_an_empty_tuning_cache(own_cache):
    """conftest: every test runs `auto`, as users do, on a tuning cache of its own (empty:
    neither the developer's measured choices nor an earlier test's), with the developer's
    compiled kernels; a run of a network with layers worth tuning writes nothing there."""
    from cnnc.runtime.backends import resolve_algorithm
    from cnnc.runtime.backends.cpu import CpuBackend
    from cnnc.runtime.backends.cpu.kernel_cache import kernel_cache_dir

    assert resolve_algorithm(None) == "auto"
    cache = CpuBackend().tune_cache()
    assert cache.path.is_relative_to(own_cache) and not cache.entries
    assert kernel_cache_dir().resolve().parent == (own_cache / "cnnc" / "numba").resolve()
    net = cnnc.load(SMALL)
    assert cnnc.run(net, {"x": np.zeros((1, 32, 56, 56), np.float32)})
    assert not cache.path.exists()


def test_tuning_is_measured_once_and_cached(tmp_path, monkeypatch):
    """The first session measures each large layer and writes the cache; the next reads it
    back and measures nothing; a cache of another machine key is not used."""
    from cnnc.runtime.backends.cpu import CpuBackend
    from cnnc.runtime.session import Session

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr(autotune, "TIMED_RUNS", 1)
    spec = tmp_path / "small.cnn"
    spec.write_text(SMALL)
    net = cnnc.load(spec)
    session = Session.create(net, None, algorithm="auto", tune=True)
    pending = session._executor(1).backend.pending_tuning(session.plan, 1)
    assert len(pending) == 2  # two shapes (the first conv has the relu fused, not a residual)
    measured: list[str] = []
    session._executor(1).backend.on_tune = measured.append
    session.run({"x": np.zeros((1, 32, 56, 56), np.float32)})
    assert len(measured) == len(pending)
    backend = session._executor(1).backend
    files = list((tmp_path / "cnnc" / "tune").glob("*.json"))
    assert [f.name for f in files] == [backend.tune_cache().path.name]
    entries = json.loads(files[0].read_text())
    assert entries["key"]["cpu"] == autotune.cpu_model()
    assert set(entries["choices"]) == pending

    again = CpuBackend()
    assert not again.pending_tuning(session.plan, 1)
    other = CpuBackend()
    other.threads += 1  # another thread count is another machine key
    assert other.pending_tuning(session.plan, 1) == pending


def test_runs_measure_nothing_unless_asked(tmp_path, monkeypatch):
    """On an empty tuning cache a run takes tiling.py's default and times nothing (a first run
    on a new machine must not spend seconds measuring); ``tune=True`` or CNNC_TUNE=1 measures,
    and a later untuned run takes the cached choices."""
    from cnnc.runtime.session import Session

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.delenv("CNNC_TUNE", raising=False)
    monkeypatch.setattr(autotune, "TIMED_RUNS", 1)
    spec = tmp_path / "small.cnn"
    spec.write_text(SMALL)
    net = cnnc.load(spec)
    x = {"x": np.zeros((1, 32, 56, 56), np.float32)}
    measured: list[str] = []

    def run(**kw):
        session = Session.create(net, None, algorithm="auto", **kw)
        backend = session._executor(1).backend
        backend.on_tune = measured.append
        session.run(x)
        return backend

    plain = run()
    assert not measured and not (tmp_path / "cnnc" / "tune").exists()
    plan = Session.create(net, None).plan
    defaults = [  # the unmeasured default of each conv
        autotune.default_choice(
            (1, *plan.values[s.inputs[0]].shape),
            (1, *plan.values[s.output].shape),
            {k: s.attrs[k] for k in ("kh", "kw", "sh", "sw", "ph", "pw", "dh", "dw", "groups")},
            plain.threads,
            "auto",
        )
        for s in plan.steps
        if s.kernel == "conv"
    ]
    assert sorted(map(str, plain.choices.values())) == sorted(map(str, defaults))
    assert [c.algorithm for c in defaults] == ["blocked", "blocked"]  # the micro-kernel
    monkeypatch.setenv("CNNC_TUNE", "1")
    tuned = run()
    assert len(measured) == 2
    monkeypatch.delenv("CNNC_TUNE")
    again = run()
    assert len(measured) == 2 and again.choices == tuned.choices
    assert again.choices == {k: again.tune_cache().get(k) for k in again.choices}


def test_candidates_are_timed_in_turn():
    """The tuner times its candidates one call of each in turn (after one untimed call of
    each), so that a burst of other work on the machine slows one call of every candidate
    rather than all of one; each candidate's fastest call is kept."""
    calls = []
    slow = iter([0.0, 0.004, 0.0, 0.0, 0.0, 0.0])  # a's first timed call meets a burst

    def a():
        calls.append("a")
        time.sleep(next(slow))

    def b():
        calls.append("b")

    seconds = autotune.measure_all([a, b], runs=3)
    assert calls == ["a", "b"] * 4
    assert len(seconds) == 2 and seconds[0] < 0.004 and seconds[1] < 0.004


def test_corrupt_cache_is_measured_again(tmp_path, monkeypatch):
    from cnnc.runtime.backends.cpu import CpuBackend

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    path = CpuBackend().tune_cache().path
    path.parent.mkdir(parents=True)
    path.write_text("{not json")
    cache = CpuBackend().tune_cache()
    assert cache.get("anything") is None
    cache.put("a layer", autotune.Choice("direct", 2, 1), 1.0)
    assert CpuBackend().tune_cache().get("a layer") == autotune.Choice("direct", 2, 1)


def test_unknown_algorithm_is_a_clear_error():
    from cnnc.compiler import DataError

    net, _, _ = _net_and_inputs()
    with pytest.raises(DataError, match="unknown algorithm 'fast'"):
        cnnc.run(net, algorithm="fast")


def _cnnc(*args, env=None):
    return subprocess.run(
        [sys.executable, "-m", "cnnc", *args],
        capture_output=True,
        text=True,
        cwd=ROOT.parent,
        env={**os.environ, **(env or {})},
    )


def test_cli_tune_bench_and_algorithm(tmp_path):
    spec = tmp_path / "net.cnn"
    spec.write_text(SMALL)
    from cnnc.runtime.backends.cpu.kernel_cache import kernel_cache_dir

    env = {  # an empty tuning cache, the compiled kernels of this process
        "XDG_CACHE_HOME": str(tmp_path / "cache"),
        "CNNC_ALGORITHM": "auto",
        "NUMBA_CACHE_DIR": os.environ.get("NUMBA_CACHE_DIR") or str(kernel_cache_dir()),
    }
    fresh = {**env, "XDG_CACHE_HOME": str(tmp_path / "fresh")}
    plain = _cnnc("run", str(spec), env=fresh)
    assert plain.returncode == 0, plain.stderr
    assert "measuring" not in plain.stderr and not (tmp_path / "fresh" / "cnnc").exists()
    asked = _cnnc("run", str(spec), "--tune", env=fresh)
    assert asked.returncode == 0 and "measuring" in asked.stderr
    assert "--tune" in _cnnc("run", "--help").stdout
    tuned = _cnnc("tune", str(spec), env=env)
    assert tuned.returncode == 0, tuned.stderr
    assert "tuning [" in tuned.stderr and "2/2" in tuned.stderr
    assert "choices cached in" in tuned.stdout
    forced = _cnnc("tune", str(spec), "--force", env=env)  # the bar counts shapes, not layers
    assert forced.returncode == 0 and "2/2" in forced.stderr and "3/" not in forced.stderr
    bench = _cnnc("bench", str(spec), "--repeat", "2", env=env)
    assert bench.returncode == 0, bench.stderr
    assert "tuning" not in bench.stderr  # read from the cache: each conv row names its choice
    (cache_file,) = (tmp_path / "cache" / "cnnc" / "tune").glob("*.json")
    cached = json.loads(cache_file.read_text())["choices"]
    labels = sorted(
        autotune.Choice(e["algorithm"], e["a"], e["b"], e.get("c", 1)).label()
        for key, e in cached.items()
        if not key.startswith("machine:")
    )
    assert len(labels) == 2, cached
    rows = [line.rstrip() for line in bench.stdout.splitlines() if " conv " in line]
    assert "algorithm" in bench.stdout and len(rows) == 2, bench.stdout
    assert sorted(label for row in rows for label in set(labels) if row.endswith(label)) == labels
    direct = _cnnc("bench", str(spec), "--repeat", "1", "--algorithm", "direct", env=env)
    assert direct.returncode == 0 and "winograd" not in direct.stdout
    bad = _cnnc("run", str(spec), "--algorithm", "fast", env=env)
    assert bad.returncode == 2 and "cnnc: error:" in bad.stderr


AVX2 = {
    "NUMBA_CPU_NAME": "haswell",
    "NUMBA_CPU_FEATURES": "+avx,+avx2,+fma,+sse4.2,+popcnt,+f16c,+bmi,+bmi2",
}


def test_kernels_under_avx2_code_generation():
    """Machines without AVX-512 (Zen 3): the Winograd, direct, micro-kernel and depthwise
    tests again, with Numba generating AVX2 code only (8-lane tiles; a small selection, in a
    process of its own)."""
    tests = ROOT / "tests"
    selection = [
        f"{tests / 'test_runtime_winograd.py'}::test_winograd_matches_torch",
        f"{tests / 'test_runtime_winograd.py'}::test_dilated_winograd_matches_torch",
        f"{tests / 'test_runtime_tiling.py'}::test_conv_matches_torch_under_any_tiling",
        f"{tests / 'test_runtime_blocked.py'}::test_blocked_conv_matches_torch",
        f"{tests / 'test_runtime_blocked.py'}::test_wide_dilations_skip_the_taps_that_read_padding",
        f"{tests / 'test_runtime_blocked.py'}::test_vector_width_follows_the_target",
        f"{tests / 'test_runtime_blocked.py'}::test_short_last_tiles_run_as_small_tiles",
        f"{tests / 'test_runtime_blocked.py'}::test_narrow_last_panel_runs_pairs_of_tiles",
        f"{tests / 'test_runtime_blocked.py'}::test_layers_from_memory_hint_their_streams",
        f"{tests / 'test_runtime_winograd.py'}::test_runs_of_tiles_end_in_small_tiles",
        f"{tests / 'test_runtime_mobile.py'}::test_depthwise_shapes",
    ]
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *selection],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, **AVX2},
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    # 30, then MR = 6 remainders, 8 narrow panels, 5 streaming layers, 5 runs of small tiles
    assert run_counts(out.stdout) == {"passed": 54}, out.stdout[-3000:]
