"""Training data: .npz members memory-mapped (never read whole), digits, image folders,
seeded augmentation, the background loader, validation splits."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from cnnc.compiler import DataError, UsageError
from cnnc.training.data import ArrayData, check_against, digits, npz_data, split
from cnnc.training.loader import Augment, batches, epoch_order
from cnnc.training.npz import NpzArrays
from conftest import require


def test_stored_npz_members_are_memory_mapped_and_read_correctly(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 255, (50, 3, 5, 4), dtype=np.uint8)
    xf = np.asfortranarray(rng.standard_normal((7, 3)).astype(np.float32))
    np.savez(tmp_path / "d.npz", x=x, y=np.arange(50), long_name_of_a_member=xf)
    arrays = NpzArrays(tmp_path / "d.npz")
    mapped = arrays.array("x")
    assert isinstance(mapped, np.memmap) and not mapped.flags.writeable
    assert np.array_equal(mapped, x)
    assert np.array_equal(arrays.array("long_name_of_a_member"), xf)
    data = npz_data(tmp_path / "d.npz")
    batch = data.images(np.array([3, 0, 49]))
    assert batch.dtype == np.float32
    np.testing.assert_allclose(batch, x[[3, 0, 49]] / 255.0, rtol=1e-6)


def test_compressed_npz_members_are_read_whole(tmp_path):
    x = np.random.default_rng(1).standard_normal((6, 1, 2, 2)).astype(np.float32)
    np.savez_compressed(tmp_path / "c.npz", x=x, y=np.zeros(6, int))
    data = npz_data(tmp_path / "c.npz")
    assert not isinstance(data.x, np.memmap)
    assert np.array_equal(data.images(np.arange(6)), x)


def test_bad_npz_files(tmp_path):
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(DataError, match="not an .npz"):
        npz_data(tmp_path / "junk.npz")
    np.savez(tmp_path / "s.npz", x=np.array(["a", "b"]).reshape(2, 1), y=np.zeros(2))
    with pytest.raises(DataError, match="float images, or uint8"):
        npz_data(tmp_path / "s.npz")
    np.savez(tmp_path / "n.npz", x=np.zeros((3, 1, 2, 2), np.float32), y=np.zeros(4))
    with pytest.raises(DataError, match="one target per image"):
        npz_data(tmp_path / "n.npz")
    x = np.zeros((3, 1, 2, 2), np.float32)
    x[1, 0, 0, 0] = np.nan
    with pytest.raises(DataError, match="image 1 .* NaN"):
        ArrayData(x, np.zeros(3), "data").images(np.arange(3))


def test_float_targets_are_checked_against_the_output_shape():
    import cnnc

    net = cnnc.load("network t(x: 1x4x4) {\n return x | conv(2, k=1)\n}")
    data = ArrayData(np.zeros((3, 1, 4, 4), np.float32), np.zeros((3, 2, 4, 4)), "d")
    check_against(data, net, "mse")
    bad = ArrayData(np.zeros((3, 1, 4, 4), np.float32), np.zeros((3, 2, 4, 5)), "d")
    with pytest.raises(DataError, match=r"\(N, 2, 4, 4\)"):
        check_against(bad, net, "mse")
    with pytest.raises(DataError, match="class indices"):
        check_against(data, net, "cross_entropy")


def test_digits_is_the_bundled_set_split_80_20_with_a_fixed_seed():
    require("sklearn")
    train, val = digits("train"), digits("val")
    assert (len(train), len(val)) == (1437, 360)
    assert train.sample_shape == (1, 8, 8) and train.classes == 10
    x = train.images(np.arange(len(train)))
    assert x.min() == 0.0 and x.max() == 1.0
    assert np.array_equal(digits("val").targets(), val.targets())


def test_augmentation_is_seeded_and_does_what_it_says():
    x = np.arange(2 * 1 * 4 * 4, dtype=np.float32).reshape(2, 1, 4, 4)
    flip = Augment.parse("flip")
    out = flip(x, np.random.default_rng(0))
    for i in range(2):
        assert np.array_equal(out[i], x[i]) or np.array_equal(out[i], x[i, :, :, ::-1])
    assert np.array_equal(out, flip(x, np.random.default_rng(0)))
    crop = Augment.parse("crop=2")
    out = crop(x, np.random.default_rng(3))
    assert out.shape == x.shape
    for i in range(2):  # every crop is a window of the zero-padded image
        padded = np.pad(x[i, 0], 2)
        assert any(
            np.array_equal(out[i, 0], padded[t : t + 4, s : s + 4])
            for t in range(5)
            for s in range(5)
        )
    assert Augment.parse("flip,crop=4").text() == "flip,crop=4"
    for bad in ("flop", "crop", "crop=0", "crop=-1", "flip=1"):
        with pytest.raises(UsageError):
            Augment.parse(bad)


def test_batches_come_in_order_prepared_in_a_background_thread():
    seen = []

    class Recording(ArrayData):
        def images(self, indices):
            seen.append(threading.current_thread().name)
            return super().images(indices)

    x = np.arange(10, dtype=np.float32).reshape(10, 1, 1, 1)
    data = Recording(x, np.arange(10), "d")
    order = epoch_order(10, 5, 2)
    got = list(batches(data, order, 4))
    assert [len(b[0]) for b in got] == [4, 4, 2]
    assert np.array_equal(np.concatenate([b[1] for b in got]), order)
    assert all(name.startswith("cnnc-batches") for name in seen)
    assert not np.array_equal(epoch_order(10, 5, 2), epoch_order(10, 5, 3))
    assert np.array_equal(epoch_order(10, 5, 2), order)


def test_val_split_is_seeded_and_disjoint():
    data = ArrayData(np.zeros((20, 1, 1, 1), np.float32), np.arange(20), "d")
    train, val = split(data, 0.25, 7)
    assert len(train) == 15 and len(val) == 5
    assert not set(train.targets()) & set(val.targets())
    assert np.array_equal(split(data, 0.25, 7)[1].targets(), val.targets())
    with pytest.raises(DataError, match="leaves"):
        split(ArrayData(np.zeros((2, 1, 1, 1), np.float32), np.arange(2), "d"), 0.1, 0)
