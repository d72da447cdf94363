"""Bad input found before any work, with a message and the contract's exit status
(issue 14's probe of a new user's mistakes, one test per item)."""

from __future__ import annotations

import io
import os
import threading
import time
import warnings
import zipfile

import numpy as np
import pytest

import cnnc
from cnnc.cli import main
from conftest import SPECS

LENET = str(SPECS / "lenet5.cnn")


def test_1_devices_and_fifos_are_refused_without_reading(tmp_path, capsys):
    spec = tmp_path / "z.cnn"
    spec.write_text('import "/dev/zero"\nnetwork n(x: 3x8x8) {\n    return x\n}\n')
    assert main(["check", str(spec)]) == 1
    assert "not a regular file" in capsys.readouterr().err
    fifo = tmp_path / "fifo.cnn"
    os.mkfifo(fifo)
    result = {}
    worker = threading.Thread(target=lambda: result.update(rc=main(["check", str(fifo)])))
    worker.start()
    worker.join(timeout=20)
    if worker.is_alive():  # unblock the reader before failing, so the suite does not hang
        with open(fifo, "w"):
            pass
        pytest.fail("reading a FIFO hung")
    assert result["rc"] == 1


def test_1_a_large_spec_is_refused_from_its_size(tmp_path, capsys):
    big = tmp_path / "big.cnn"
    with open(big, "wb") as fh:
        fh.truncate(5 * 2**20)  # sparse: the size is known without writing 5 MiB
    assert main(["check", str(big)]) == 1
    assert "limited to 4,194,304" in capsys.readouterr().err


def test_2_weights_given_as_npy_name_the_mistake(tmp_path, capsys):
    np.save(tmp_path / "w.npy", np.zeros(3, np.float32))
    assert main(["run", LENET, "--weights", str(tmp_path / "w.npy")]) == 1
    err = capsys.readouterr().err
    assert "is a single .npy array" in err and "internal error" not in err


def _bomb(path, key: str, shape: tuple):
    """An .npz whose one member declares ``shape`` and inflates to its full size."""
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        header, {"descr": "<f4", "fortran_order": False, "shape": shape}
    )
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        with archive.open(f"{key}.npy", "w", force_zip64=True) as fh:
            fh.write(header.getvalue())
            zeros = bytes(2**20)
            for _ in range(int(np.prod(shape)) * 4 // 2**20):
                fh.write(zeros)


def test_3_weight_archives_are_checked_from_their_headers(tmp_path, capsys, monkeypatch):
    path = tmp_path / "bomb.npz"
    _bomb(path, "c1.conv.weight", (64, 1024, 1024))  # 256 MiB inflated, ~250 KiB on disk
    assert path.stat().st_size < 2**20
    inflated = []
    real = np.lib.format.read_array
    monkeypatch.setattr(
        np.lib.format, "read_array", lambda *a, **k: inflated.append(1) or real(*a, **k)
    )
    assert main(["run", LENET, "--weights", str(path)]) == 1
    err = capsys.readouterr().err
    assert "key 'c1.conv.weight' has shape (64, 1024, 1024), expected (6, 1, 5, 5)" in err
    assert "missing key 'c1.conv.bias'" in err
    assert inflated == []


def test_4_api_batches_and_single_samples():
    net = cnnc.load(LENET)
    with pytest.raises(cnnc.ResourceError, match="use a smaller batch size"):
        cnnc.run(net, batch=10**9)
    for bad in (0, -1, 2.5, True):
        with pytest.raises(cnnc.CnncError, match="batch must be a positive integer"):
            cnnc.run(net, batch=bad)
    one = cnnc.run(net, inputs={"x": np.zeros((1, 32, 32), np.float32)})["out"]
    assert one.shape == (1, 10)
    with pytest.raises(cnnc.DataError, match="has shape"):
        cnnc.run(net, inputs={"x": np.zeros((0, 1, 32, 32), np.float32)})


@pytest.mark.parametrize(
    "out, status, fragment",
    [
        ("x.txt", 2, "use a .npy or .npz file"),
        ("sub", 2, "use a .npy or .npz file"),
        ("dir.npy", 2, "is a directory"),
        ("missing/y.npy", 1, "no such directory"),
        ("w.npz", 2, "is also read by this run"),
    ],
)
def test_5_outputs_are_checked_before_computing(
    tmp_path, capsys, monkeypatch, out, status, fragment
):
    from cnnc.runtime import session

    (tmp_path / "sub").mkdir()
    (tmp_path / "dir.npy").mkdir()
    assert main(["run", LENET, "--save-weights", str(tmp_path / "w.npz")]) == 0
    capsys.readouterr()
    monkeypatch.setattr(session.Session, "run", lambda *a: pytest.fail("ran before checking"))
    args = ["run", LENET, "--weights", str(tmp_path / "w.npz"), "--out", str(tmp_path / out)]
    assert main(args) == status
    assert fragment in capsys.readouterr().err


@pytest.mark.parametrize(
    "args",
    [
        ["run", LENET, "--batch", "0"],
        ["bench", LENET, "--repeat", "0"],
        ["bench", LENET, "--batch", "0"],
        ["run", LENET, "--out", "y.csv"],
    ],
)
def test_6_usage_errors_exit_2(args, capsys):
    assert main(args) == 2
    assert capsys.readouterr().err.startswith("cnnc: error:")


def test_7_a_20k_layer_plan_builds_in_near_linear_time():
    from cnnc.runtime.plan import build_plan

    spec = """
block unit(x) {
    y = x | conv(4, k=1) | bn | relu
    return add(x, y) | identity
}
network deep(x: 4x4x4) {
    return x | unit * N
}
"""
    net = cnnc.load(spec.replace("N", "4000"))
    assert len(net.layers) == 20_000
    t0 = time.process_time()
    plan = build_plan(net, None)
    elapsed = time.process_time() - t0
    assert len(plan.steps) == 8000 and len(plan.slot_sizes) <= 4
    # The quadratic version took 43 s (268 s on a busy machine); this takes about 1 s.
    assert elapsed < 20, f"building a 20k-layer plan took {elapsed:.1f} s of CPU"


def test_8_nan_weights_warn_and_complex_inputs_are_refused(tmp_path, capsys):
    net = cnnc.load(LENET)
    from cnnc.runtime import weights as weights_io

    weights = weights_io.initialise(net)
    weights["c1.conv.weight"][0, 0, 0, 0] = np.nan
    with pytest.warns(cnnc.compiler.CnncWarning, match="NaN or infinite"):
        cnnc.run(net, weights=weights)
    np.savez(tmp_path / "nan.npz", **weights)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # NumPy's must not reach the user
        assert main(["run", LENET, "--weights", str(tmp_path / "nan.npz")]) == 0
    err = capsys.readouterr().err
    assert "cnnc: warning: 1 weight array(s) hold NaN" in err and "RuntimeWarning" not in err
    np.save(tmp_path / "c.npy", np.ones((1, 1, 32, 32), np.complex64))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert main(["run", LENET, "--input", str(tmp_path / "c.npy")]) == 1
    assert "holds complex numbers" in capsys.readouterr().err
    with pytest.raises(cnnc.DataError, match="complex"):
        cnnc.run(net, inputs={"x": np.ones((1, 1, 32, 32), np.complex64)})


def test_inputs_and_weights_must_be_regular_files_of_a_size_that_fits(
    tmp_path, capsys, monkeypatch
):
    from cnnc.runtime import data

    fifo = tmp_path / "x.npy"
    os.mkfifo(fifo)
    assert main(["run", LENET, "--input", str(fifo)]) == 1
    assert "not a regular file" in capsys.readouterr().err
    assert main(["run", LENET, "--weights", str(fifo)]) == 1
    assert "not a regular file" in capsys.readouterr().err
    big = tmp_path / "big.npy"
    with open(big, "wb") as fh:  # 80 MB declared, sparse on disk
        np.lib.format.write_array_header_1_0(
            fh, {"descr": "<f4", "fortran_order": False, "shape": (20_000, 1, 32, 32)}
        )
        fh.truncate(fh.tell() + 20_000 * 32 * 32 * 4)
    monkeypatch.setattr(data, "available_bytes", lambda: 64 * 2**20)
    assert main(["run", LENET, "--input", str(big)]) == 1
    assert "split it into smaller files" in capsys.readouterr().err
