"""Later passes replay the calls the first bound (CpuBackend.replay): the same outputs as
PyTorch, through plain steps (fc, pooling, softmax), bound convolutions and depthwise steps,
and chains in bands; dropped and made again where a buffer the calls hold moves."""

from __future__ import annotations

import numpy as np
import pytest

import cnnc
import torch_reference
from cnnc.runtime.backends.cpu import bands, blocked, bounds
from cnnc.runtime.session import Session

SPEC = """
network t(x: 8x11x9) {
    y = x | conv(24, k=1, bias=false) | bn | relu6
    y = y | dwconv(k=3, s=1, p=1, bias=false) | bn | relu6
    y = add(y | conv(8, k=1, bias=false) | bn, x)
    y = y | conv(16, k=3, s=2, p=1) | bn | gelu
    return y | gap | flatten | fc(5) | softmax
}
"""


def _session(torch, banded: bool, monkeypatch):
    if banded:  # every chain in bands of two rows, whatever this machine measures
        monkeypatch.setattr(bands, "band_rows", lambda width, channels, threads: 2)
        monkeypatch.setattr(bands, "l2_cache_bytes", lambda: 64)
        monkeypatch.setattr(bands, "_bands_pay", lambda *args: True)
    net = cnnc.load(SPEC)
    weights = torch_reference.random_weights(net, 0)
    return net, weights, Session.create(net, weights, batch=2)


def _check(torch, net, weights, session, seed: int):
    x = np.random.default_rng(seed).standard_normal((2, *net.inputs["x"].shape))
    inputs = {"x": x.astype(np.float32)}
    want = torch_reference.forward(torch, net, weights, inputs)
    got = session.run(inputs)
    for name in want:
        np.testing.assert_allclose(got[name], want[name], rtol=2e-4, atol=2e-5)


@pytest.mark.parametrize("banded", [False, True])
def test_later_passes_replay_the_bound_calls(torch, banded, monkeypatch):
    net, weights, session = _session(torch, banded, monkeypatch)
    executor = session._executor(2)
    backend = executor.backend
    unbound = backend.replay(executor.bound, executor.chains, executor.work, executor._inputs())
    assert unbound is None
    # the first pass's later steps can grow the scratch rows that earlier ones were bound
    # to: those are bound again by the second pass, and a replay made at its end at least
    for seed in (0, 1):
        _check(torch, net, weights, session, seed)
    replay = executor._replay
    assert replay is not None
    if banded:
        assert any("bands" in backend.choice_of(step) for step in session.plan.steps)
    for seed in (2, 3):  # replayed: the same function, other inputs
        _check(torch, net, weights, session, seed)
        assert executor._replay is replay


def test_a_replay_is_made_again_when_buffers_move(torch, monkeypatch):
    net, weights, session = _session(torch, False, monkeypatch)
    for seed in (0, 1):
        _check(torch, net, weights, session, seed)
    executor = session._executor(2)
    backend, replay = executor.backend, executor._replay
    given = {"x": np.zeros((2, *net.inputs["x"].shape), np.float32)}
    backend.scratch(backend.scratch(1).shape[1] + 4096)  # reallocated: the calls' is stale
    assert replay(given) is False  # ran nothing
    _check(torch, net, weights, session, 2)  # bound again through the launchers
    assert executor._replay is not replay and executor._replay(given) is True
    replay = executor._replay
    backend.forget_bindings()  # new weights (training): nothing bound stays
    assert replay(given) is False
    _check(torch, net, weights, session, 3)
    replay, was = executor._replay, bounds.checked()
    bounds.set_checked(not was)  # checked mode calls blocked_run, which checks first
    try:
        assert replay(given) is False
        _check(torch, net, weights, session, 4)
        assert executor._replay(given) is True
    finally:
        bounds.set_checked(was)


def test_a_replay_calls_the_compiled_code_for_its_arguments():
    """Numba kernels are called through their compiled code for the bound arguments' types,
    without the dispatcher; other callables as they are."""
    from cnnc.runtime.backends.cpu import elementwise, layout
    from cnnc.runtime.backends.cpu.replay import _compiled

    x = np.zeros(3, np.float32)
    entry = _compiled(elementwise.activation_pass, (x, 0, 0.0, 0.0))  # a Python function
    assert entry is elementwise.activation_pass
    args = (np.ones((1, 2, 2, 3), np.float32), np.zeros((1, 12), np.float32))
    layout.flatten(*args)  # compiled for these types
    entry = _compiled(layout.flatten, args)
    assert entry is not layout.flatten and callable(entry)
    entry(*args)
    np.testing.assert_array_equal(args[1], 1.0)
    assert _compiled(blocked.blocked_run, ()) in (blocked.blocked_run, blocked.blocked_kernel)


STEM = """
network t(x: {c}x{h}x{w}) {{
    return x | conv(8, k={k}, s=2, p={p}, bias=false) | bn | relu | gap | flatten | fc(3)
}}
"""


@pytest.mark.parametrize("c,h,w,k,p", [(3, 23, 17, 3, 1), (1, 9, 12, 7, 3), (5, 16, 16, 3, 1)])
@pytest.mark.parametrize("batch", [1, 2])
def test_a_first_layer_pads_the_callers_nchw_array(torch, c, h, w, k, p, batch):
    """A first convolution that pads reads the caller's NCHW array in its padding copy (no
    conversion to NHWC): float32 in C order as it is, float64, a transposed view and a
    read-only array through a copy; the same outputs as PyTorch on every replayed pass.
    An input read twice (the layer and a residual) is converted as before."""
    net = cnnc.load(STEM.format(c=c, h=h, w=w, k=k, p=p))
    weights = torch_reference.random_weights(net, 0)
    session = Session.create(net, weights, batch=batch)
    rng = np.random.default_rng(c * 100 + k)
    shape = (batch, c, h, w)
    readonly = rng.standard_normal(shape).astype(np.float32)
    readonly.flags.writeable = False
    transposed = np.ascontiguousarray(rng.standard_normal(shape[::-1]).astype(np.float32)).T
    arrays = [rng.standard_normal(shape).astype(np.float32) for _ in range(2)]
    arrays += [rng.standard_normal(shape), transposed, readonly]
    for i, x in enumerate(arrays):
        want = torch_reference.forward(torch, net, weights, {"x": np.array(x, np.float32)})
        got = session.run({"x": x})
        for name in want:
            np.testing.assert_allclose(got[name], want[name], rtol=2e-4, atol=2e-5)
        replay = session._executor(batch)._replay
        if i >= 1:
            assert replay is not None and replay.in_place == ["x"]
    np.testing.assert_array_equal(transposed, transposed)  # the caller's arrays untouched


def test_an_input_read_twice_is_converted(torch):
    net, weights, session = _session(torch, False, None)
    for seed in (0, 1, 2):
        _check(torch, net, weights, session, seed)
    assert session._executor(2)._replay.in_place == []
