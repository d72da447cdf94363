"""Inverted-residual chains run in bands of rows (backends/cpu/bands.py) against PyTorch.

Bands are forced small (a row or a few: ``band_rows`` patched, and an L2 cache of 64 bytes
that no image fits in), so that every band edge
of odd-sized images is crossed: strides 1 and 2, 3x3 and 5x5 depthwise windows, padding
and none, the residual add folded into the projection, a squeeze-and-excitation gate
between the depthwise step and the projection (then only expansion -> depthwise bands),
batch 1 and 3, one thread and two. Each test also checks that the chain did run in bands,
so that a plan or backend that stopped banding fails here rather than passing vacuously.
"""

from __future__ import annotations

import numpy as np
import pytest
from kernel_cases import numba_threads

import cnnc
import torch_reference
from cnnc.runtime.backends.cpu import bands, depthwise
from cnnc.runtime.plan import build_plan
from cnnc.runtime.session import Session

BLOCK = """
network t(x: {c}x{h}x{w}) {{
    y = x | conv({e}, k=1, bias=false) | bn | {act}
    y = y | dwconv(k={k}, s={s}, p={p}, bias=false) | bn | {act}
    y = y | conv({out}, k=1, bias=false) | bn
    return {ret}
}}
"""

SE_BLOCK = """
network t(x: {c}x{h}x{w}) {{
    y = x | conv({e}, k=1, bias=false) | bn | silu
    y = y | dwconv(k={k}, s={s}, p={p}, bias=false) | bn | silu
    g = y | gap | conv(4, k=1) | silu | conv({e}, k=1) | sigmoid
    return mul(y, g) | conv({c}, k=1, bias=false) | bn
}}
"""


def run_banded(torch, spec: str, batch: int, threads: int, rows: int, monkeypatch) -> list:
    """Run ``spec`` with expansion bands of ``rows`` rows against PyTorch; the labels of
    what each step ran (``choice_of``), for the caller to check that bands ran."""
    monkeypatch.setattr(bands, "band_rows", lambda width, channels, threads: rows)
    monkeypatch.setattr(bands, "l2_cache_bytes", lambda: 64)  # no test image fits
    monkeypatch.setattr(bands, "_bands_pay", lambda *args: True)  # whatever this machine says
    net = cnnc.load(spec)
    weights = torch_reference.random_weights(net, 0)
    x = np.random.default_rng(1).standard_normal((batch, *net.inputs["x"].shape))
    inputs = {"x": x.astype(np.float32)}
    want = torch_reference.forward(torch, net, weights, inputs)
    with numba_threads(threads):
        session = Session.create(net, weights, batch=batch)
        got = session.run(inputs)
        backend = next(iter(session.executors.values())).backend
    for name in want:
        np.testing.assert_allclose(got[name], want[name], rtol=2e-4, atol=2e-4, err_msg=spec)
    return [backend.choice_of(step) for step in session.plan.steps]


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize(
    "k,s,p,rows",
    [(3, 1, 1, 1), (3, 2, 1, 2), (5, 1, 2, 3), (5, 2, 2, 1), (3, 2, 0, 3), (5, 1, 0, 2)],
)
def test_bands_of_a_block_match_torch(torch, monkeypatch, k, s, p, rows, batch, threads):
    """Expansion -> depthwise -> projection in bands; with the residual where the shapes
    allow it (stride 1, same padding)."""
    residual = s == 1 and 2 * p == k - 1
    c, h, w = 5, 13, 11
    spec = BLOCK.format(
        c=c, h=h, w=w, e=23, k=k, s=s, p=p, act="relu6", out=c if residual else 7,
        ret="add(y, x)" if residual else "y",
    )  # fmt: skip
    ran = run_banded(torch, spec, batch, threads, rows, monkeypatch)
    assert ran[0].endswith(" in bands") and ran[1].endswith(" bands"), ran
    assert ran[2].endswith(" in bands"), ran


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("rows,label", [(13, "bands of 1 images"), (27, "bands of 2 images")])
def test_bands_of_whole_images_match_torch(torch, monkeypatch, rows, label, threads):
    """Where a band holds whole images (batch > 1), a few images at a time: 3 images in
    bands of 2 and 1."""
    spec = BLOCK.format(c=5, h=13, w=11, e=23, k=3, s=1, p=1, act="relu6", out=5,
                        ret="add(y, x)")  # fmt: skip
    ran = run_banded(torch, spec, 3, threads, rows, monkeypatch)
    assert ran[0].endswith(" in bands") and ran[1] == label and ran[2].endswith(" in bands")


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("k,s", [(3, 1), (5, 2)])
def test_bands_stop_at_a_gate(torch, monkeypatch, k, s, threads):
    """With squeeze-and-excitation between them, the depthwise step writes its whole output
    in bands before the gate's pool, and the projection runs on its own (gated)."""
    spec = SE_BLOCK.format(c=6, h=15, w=9, e=27, k=k, s=s, p=k // 2)
    plan = build_plan(cnnc.load(spec), None)
    assert [n for _, n in plan.chains] == [2]
    ran = run_banded(torch, spec, 3, threads, 2, monkeypatch)
    assert ran[0].endswith(" in bands") and ran[1].endswith(" bands"), ran
    assert not any(label.endswith(" in bands") for label in ran[2:]), ran


@pytest.mark.parametrize("threads", [1, 2])
def test_bands_where_they_pay_on_this_machine(monkeypatch, threads):
    """Untuned, a chain runs in bands on one thread only; tuning times it both ways and keeps
    the answer in the tuning cache, which later sessions follow, either way."""
    monkeypatch.setattr(bands, "l2_cache_bytes", lambda: 64)
    spec = BLOCK.format(c=5, h=13, w=11, e=23, k=3, s=1, p=1, act="relu6", out=5,
                        ret="add(y, x)")  # fmt: skip
    net = cnnc.load(spec)
    x = {"x": np.random.default_rng(0).standard_normal((1, 5, 13, 11)).astype(np.float32)}

    def run(tune: bool):
        with numba_threads(threads):
            session = Session.create(net, batch=1, tune=tune)
            got = session.run(x)
            backend = next(iter(session.executors.values())).backend
        banded = backend.choice_of(session.plan.steps[1]).endswith(" bands")
        # the expansion says so too, also after the chain was timed step by step
        assert backend.choice_of(session.plan.steps[0]).endswith(" in bands") == banded
        return backend.tune_cache(), banded, got

    _, banded, want = run(tune=False)
    assert banded == (threads == 1)
    cache, banded, got = run(tune=True)
    for name in want:  # timed both ways first, the same output
        np.testing.assert_allclose(got[name], want[name], rtol=1e-5, atol=1e-5)
    kept = [v for k, v in cache.entries.items() if k.startswith("machine:bands:")]
    assert len(kept) == 1 and banded == kept[0]["value"]
    for value in (True, False):
        kept[0]["value"] = value
        cache.save()
        assert run(tune=False)[1] == value


def test_a_band_of_rows_reads_only_rows_it_holds():
    """The depthwise kernel's band: the rows it reads must be in the rows it is given. A
    band whose buffer lacks a row the window needs fails in checked mode (bounds.py),
    and a band of several images is refused."""
    from cnnc.runtime.backends.cpu import bounds

    x = np.ones((1, 4, 9, 16), np.float32)  # image rows 3..6 of a 12-row image
    out = np.zeros((1, 12, 9, 16), np.float32)
    a = dict(kh=3, kw=3, sh=1, sw=1, ph=1, pw=1, dh=1, dw=1, act=0, alpha=0.0, beta=0.0, mult=1)
    arrays = {"w": np.ones((3, 3, 16), np.float32), "b": np.zeros(16, np.float32)}

    class Backend:
        algorithm, threads = "direct", 1

        def scratch(self, floats):
            return np.zeros((1, floats), np.float32)

    none = np.empty((0, 0, 0, 0), np.float32)
    kernel, args, _ = depthwise.dwconv_call(Backend(), a, arrays, x, none, out, (12, 3, 4, 6))
    kernel(*args)  # output rows 4, 5 read image rows 3..6: all held
    np.testing.assert_array_equal(out[0, 4:6, 1:-1], 9.0)
    assert not out[0, :4].any() and not out[0, 6:].any()
    with pytest.raises(ValueError, match="one image"):
        depthwise.dwconv_call(Backend(), a, arrays, np.ones((2, 4, 9, 16), np.float32), none,
                              np.zeros((2, 12, 9, 16), np.float32), (12, 3, 4, 6))  # fmt: skip
    was = bounds.checked()
    bounds.set_checked(True)
    try:
        kernel, args, _ = depthwise.dwconv_call(Backend(), a, arrays, x, none, out, (12, 3, 3, 6))
        kernel(*args)  # output row 3 reads image row 2: not held
        with pytest.raises(bounds.BoundsError, match="depthwise .* of its input"):
            bounds.raise_fault()
    finally:
        bounds.set_checked(was)
