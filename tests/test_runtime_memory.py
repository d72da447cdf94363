"""What a session keeps in memory, and the ways of computing weights that bound it: seeded
weights drawn a chunk at a time, Winograd weights transformed a block at a time, one copy of
each layer's weights (the plan's packed one), and fc's one-thread path for small layers."""

from __future__ import annotations

import math
import threading

import numpy as np
import pytest

import cnnc
from cnnc.compiler import ResourceError, UsageError
from cnnc.runtime import weights as weights_io
from cnnc.runtime.backends.cpu import conv, winograd
from cnnc.runtime.session import Session
from conftest import SPECS

NET = """network tiny(x: 3x16x16) {
    y = x | conv(16, k=3, p=same) | bn | relu | gap | flatten
    return y | fc(10)
}
"""


def test_seeded_weights_are_the_same_drawn_by_chunks(monkeypatch):
    """Chunked drawing gives the values of one draw per array (the stream does not depend on
    how it is cut), so seeded weights did not change when it was introduced."""
    net = cnnc.load(NET)
    monkeypatch.setattr(weights_io, "CHUNK", 7)
    got = weights_io.initialise(net, seed=3)
    rng = np.random.default_rng(3)
    conv_w = rng.standard_normal((16, 3, 3, 3)) * math.sqrt(2.0 / 27)
    limit = math.sqrt(6.0 / (16 + 10))
    fc_w = rng.uniform(-limit, limit, (10, 16))
    assert got["y.conv.weight"].dtype == np.float32
    np.testing.assert_array_equal(got["y.conv.weight"], conv_w.astype(np.float32))
    np.testing.assert_array_equal(got["out.fc.weight"], fc_w.astype(np.float32))


def test_seeded_weights_drawn_beside_other_work_are_the_same():
    """``initialise_while`` draws on a worker thread while the caller's work runs on its own
    (Session.create loads the CPU backend meanwhile): the same weights, and an error of
    either side raised to the caller."""
    net = cnnc.load(NET)
    ran_on = []
    got = weights_io.initialise_while(net, 3, lambda: ran_on.append(threading.get_ident()))
    assert ran_on == [threading.get_ident()]
    want = weights_io.initialise(net, 3)
    assert got.keys() == want.keys()
    assert all(np.array_equal(got[k], want[k]) and got[k].dtype == want[k].dtype for k in want)
    with pytest.raises(UsageError, match="seed"):
        weights_io.initialise_while(net, -1, lambda: None)

    def failing():
        raise ResourceError("the backend did not start")

    with pytest.raises(ResourceError, match="did not start"):
        weights_io.initialise_while(net, 3, failing)


def test_session_keeps_one_packed_copy_of_the_weights():
    """The plan holds each layer's packed weights and nothing raw; the session holds a seed
    or path, not a second dict of arrays, and draws the same weights again when asked."""
    net = cnnc.load(SPECS / "resnet.cnn", network="resnet18")
    session = Session.create(net, None, seed=5)
    assert session.source == 5
    for step in session.plan.steps:
        assert not step.raw
        if step.kernel == "conv":
            assert set(step.arrays) == {"w", "b"}
    again, drawn = weights_io.initialise(net, 5), session.weights
    assert drawn.keys() == again.keys()
    assert all(np.array_equal(drawn[k], again[k]) for k in again)
    given = {k: v.copy() for k, v in again.items()}
    key = next(iter(given))
    assert Session.create(net, given).weights[key] is given[key]


def test_a_layer_keeps_one_form_of_its_weights():
    """A layer keeps only the form of its weights it runs on (the micro-kernel's panels,
    Winograd's transformed weights), in the plan too; another algorithm, for another batch
    size, rebuilds its own from it and gives the same outputs."""
    net = cnnc.load(NET)
    session = Session.create(net, None, seed=2, algorithm="direct")
    rng = np.random.default_rng(0)
    x1 = {"x": rng.standard_normal((1, 3, 16, 16)).astype(np.float32)}
    first = session.run(x1)
    (step,) = [s for s in session.plan.steps if s.kernel == "conv"]
    assert set(step.arrays) == {"panels", "b"}
    x2 = {"x": np.concatenate([x1["x"], x1["x"][:, :, ::-1].copy()])}
    session.algorithm = "winograd"
    second = session.run(x2)
    assert set(step.arrays) == {"winograd4", "b"}
    np.testing.assert_allclose(second["out"][:1], first["out"], rtol=1e-4, atol=1e-5)
    fresh = Session.create(net, None, seed=2, algorithm="direct").run(x2)
    np.testing.assert_allclose(second["out"], fresh["out"], rtol=1e-4, atol=1e-5)
    session.algorithm = "direct"  # the packed weights again, from Winograd's
    third = session.run(x1)
    assert set(step.arrays) == {"panels", "b"}
    np.testing.assert_allclose(third["out"], first["out"], rtol=1e-5, atol=1e-6)


def test_winograd_weights_come_back_through_the_pseudo_inverse():
    rng = np.random.default_rng(1)
    wmat = rng.standard_normal((1, 9 * 5, 37)).astype(np.float32)
    for m in (2, 4):
        back = winograd.untransform_weights(winograd.transform_weights(wmat, m), m, 37)
        np.testing.assert_allclose(back, wmat, rtol=1e-5, atol=1e-5)


def test_winograd_weights_transformed_by_blocks_match_the_whole_layer():
    """Transformed a panel of output channels at a time (the last one partial), the values
    of the whole layer in one float64 product, zero past the last channel."""
    rng = np.random.default_rng(0)
    wmat = rng.standard_normal((1, 9 * 512, 130)).astype(np.float32)
    for m in (2, 4):
        g, t = winograd.TRANSFORMS[m][1], m + 2
        w = wmat.reshape(3, 3, 512, 130).astype(np.float64)
        u = np.tensordot(g, np.tensordot(g, w, axes=(1, 0)), axes=(1, 1)).transpose(1, 0, 2, 3)
        want = u.reshape(t * t, 512, 130).astype(np.float32)
        panels = winograd.transform_weights(wmat, m)  # (t*t, panels, C, NR)
        got = panels.transpose(0, 2, 1, 3).reshape(t * t, 512, -1)
        np.testing.assert_array_equal(got[:, :, :130], want)
        assert not got[:, :, 130:].any()


def test_fc_on_one_thread_and_on_all_agree(monkeypatch):
    """Small fc layers take the one-thread path, large ones the parallel one: same results."""
    net = cnnc.load(NET)
    x = {"x": np.random.default_rng(1).standard_normal((3, 3, 16, 16)).astype(np.float32)}
    small = cnnc.run(net, x, seed=2)
    monkeypatch.setattr(conv, "FC_PARALLEL_FLOATS", 0)
    large = cnnc.run(net, x, seed=2)
    (name,) = small
    assert np.isfinite(small[name]).all() and np.abs(small[name]).max() > 0
    np.testing.assert_allclose(large[name], small[name], rtol=1e-6, atol=1e-6)
