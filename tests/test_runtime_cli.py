"""`cnnc run` and `cnnc bench` as a user runs them: data files, errors, and nothing lost."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import numpy as np

import cnnc
from cnnc.cli import main
from conftest import SPECS

LENET = str(SPECS / "lenet5.cnn")


def test_run_prints_shapes_statistics_and_top5(tmp_path, capsys):
    """The printed statistics and top-5 are those of the output it saves (LeNet ends in a
    softmax, so any output has mean 0.1: the test reads the numbers, not the words)."""
    saved = tmp_path / "out.npy"
    assert main(["run", LENET, "--seed", "3", "--batch", "2", "--out", str(saved)]) == 0
    out = capsys.readouterr().out
    y = np.load(saved)
    assert y.shape == (2, 10)
    np.testing.assert_allclose(y.sum(axis=1), 1.0, rtol=1e-5)  # a softmax per sample
    stats = re.search(r"out: shape 2x10  min (\S+)  max (\S+)  mean (\S+)  std (\S+)", out)
    assert stats, out
    printed = [float(v) for v in stats.groups()]
    np.testing.assert_allclose(printed, [y.min(), y.max(), y.mean(), y.std()], rtol=1e-5)
    for n in range(2):
        ranked = re.search(rf"sample {n} top-5: (.*)", out).group(1)
        shown = [(int(i), float(v)) for i, v in re.findall(r"(\d+) \((\S+)\)", ranked)]
        assert [i for i, _ in shown] == list(np.argsort(-y[n], kind="stable")[:5])
        np.testing.assert_allclose([v for _, v in shown], np.sort(y[n])[::-1][:5], rtol=1e-3)


def test_run_is_deterministic_and_saves_outputs_and_weights(tmp_path, capsys):
    a, b, w = tmp_path / "a.npy", tmp_path / "b.npy", tmp_path / "w.npz"
    assert main(["run", LENET, "--batch", "3", "--out", str(a), "--save-weights", str(w)]) == 0
    assert main(["run", LENET, "--batch", "3", "--out", str(b), "--weights", str(w)]) == 0
    assert np.load(a).shape == (3, 10)
    np.testing.assert_array_equal(np.load(a), np.load(b))
    from cnnc.runtime.weights import expected

    assert set(np.load(w).files) == set(expected(cnnc.load(LENET)))


def test_input_file_and_npz_outputs(tmp_path, capsys):
    x = np.random.default_rng(0).standard_normal((2, 1, 32, 32)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "one.npy", x[0])
    out = tmp_path / "o.npz"
    assert main(["run", LENET, "--input", f"x={tmp_path / 'x.npy'}", "--out", str(out)]) == 0
    assert np.load(out)["out"].shape == (2, 10)
    assert main(["run", LENET, "--input", str(tmp_path / "one.npy")]) == 0


def test_image_input(tmp_path, capsys):
    from PIL import Image

    Image.fromarray(np.arange(32 * 32, dtype=np.uint8).reshape(32, 32)).save(tmp_path / "d.png")
    assert main(["run", LENET, "--input", str(tmp_path / "d.png")]) == 0
    Image.fromarray(np.zeros((20, 30), np.uint8)).save(tmp_path / "small.png")
    assert main(["run", LENET, "--input", str(tmp_path / "small.png")]) == 1
    assert "30x20 pixels" in capsys.readouterr().err


def test_wrong_input_shape_is_a_clear_error(tmp_path, capsys):
    np.save(tmp_path / "x.npy", np.zeros((2, 3, 32, 32), np.float32))
    assert main(["run", LENET, "--input", str(tmp_path / "x.npy")]) == 1
    err = capsys.readouterr().err
    assert "has shape (2, 3, 32, 32)" in err and "(N, 1, 32, 32)" in err


def test_weights_are_strict_and_name_the_key(tmp_path, capsys):
    net = cnnc.load(LENET)
    good = tmp_path / "w.npz"
    assert main(["run", LENET, "--save-weights", str(good)]) == 0
    weights = dict(np.load(good))
    weights.pop("c3.conv.bias")
    weights["c1.conv.weight"] = np.zeros((6, 1, 3, 3), np.float32)
    weights["extra.weight"] = np.zeros(3, np.float32)
    bad = tmp_path / "bad.npz"
    np.savez(bad, **weights)
    capsys.readouterr()
    assert main(["run", LENET, "--weights", str(bad)]) == 1
    err = capsys.readouterr().err
    assert "missing key 'c3.conv.bias' (expected shape (16,))" in err
    assert "'c1.conv.weight' has shape (6, 1, 3, 3), expected (6, 1, 5, 5)" in err
    assert "unexpected key 'extra.weight'" in err
    assert net.layers[0].name == "c1.conv"


def test_failed_run_keeps_existing_output(tmp_path, capsys):
    out = tmp_path / "keep.npy"
    out.write_bytes(b"precious")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    assert main(["run", LENET, "--weights", str(tmp_path / "junk.npz"), "--out", str(out)]) == 1
    assert out.read_bytes() == b"precious"
    assert "not a valid .npz" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["junk.npz", "keep.npy"]


def test_run_refuses_what_cannot_fit(capsys, monkeypatch):
    from cnnc.runtime import memory

    monkeypatch.setattr(memory, "available_bytes", lambda: 64 * 2**20)
    assert main(["run", str(SPECS / "vgg.cnn"), "--network", "vgg_d"]) == 1
    err = capsys.readouterr().err
    assert "needs about" in err and "available" in err


def test_huge_batch_is_refused_before_allocating(capsys):
    assert main(["run", str(SPECS / "unet.cnn"), "--batch", "100000"]) == 1
    assert "use a smaller batch size" in capsys.readouterr().err


def test_bench_json(capsys):
    assert main(["bench", LENET, "--batch", "2", "--repeat", "3", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["batch"] == 2 and info["device"] == "cpu" and info["median_ms"] > 0
    assert info["threading_layer"] in ("omp", "tbb", "workqueue")
    assert {entry["op"] for entry in info["layers"]} >= {"conv", "avgpool", "fc", "softmax"}


def test_bench_table(capsys):
    assert main(["bench", str(SPECS / "superres.cnn"), "--network", "srcnn", "--repeat", "2"]) == 0
    out = capsys.readouterr().out
    assert "GFLOP/s" in out and "share" in out and "total" in out and "threading layer" in out


def test_cuda_without_a_usable_gpu_is_a_clear_error(capsys):
    assert main(["run", LENET, "--device", "cuda"]) == 1
    err = capsys.readouterr().err
    assert "device 'cuda'" in err and "Traceback" not in err and "internal error" not in err


def test_every_library_spec_runs(capsys):
    for path in sorted(SPECS.glob("*.cnn")):
        for net in cnnc.load_all(path):
            if net.total_macs < 3e9:
                outputs = cnnc.run(net, batch=1)
                assert all(np.isfinite(y).all() for y in outputs.values()), net.name


def test_several_inputs_after_one_flag_or_one_flag_each(tmp_path, capsys):
    spec = tmp_path / "two.cnn"
    spec.write_text(
        "network two(a: 2x4x4, b: 2x4x4) {\n    return mul(a, b | gap | sigmoid) | flatten\n}\n"
    )
    rng = np.random.default_rng(0)
    a, b = (rng.standard_normal((3, 2, 4, 4)).astype(np.float32) for _ in range(2))
    np.save(tmp_path / "a.npy", a)
    np.save(tmp_path / "b.npy", b)
    one, each = tmp_path / "one.npy", tmp_path / "each.npy"
    pair = [f"a={tmp_path / 'a.npy'}", f"b={tmp_path / 'b.npy'}"]
    assert main(["run", str(spec), "--input", *pair, "--out", str(one)]) == 0
    assert main(["run", str(spec), "--input", pair[0], "--input", pair[1], "--out", str(each)]) == 0
    gate = 1 / (1 + np.exp(-b.mean((2, 3), keepdims=True)))
    np.testing.assert_allclose(np.load(one), (a * gate).reshape(3, -1), rtol=1e-6)
    np.testing.assert_array_equal(np.load(one), np.load(each))
    assert main(["run", str(spec), "--input", pair[0]]) == 1
    assert "no --input for b" in capsys.readouterr().err


#: A command's end from the command line (cli._exit_now): Numba's registries loaded, an exit
#: handler of the host's, output left in the buffer; with "thread", a thread still running.
EXIT_PROBE = r"""
import atexit, sys, threading, time
import numba.core.registry
from cnnc import cli

atexit.register(lambda: print(" and the exit handler's", end=""))
print("the command's output", end="")
if sys.argv[1] == "thread":
    threading.Thread(target=time.sleep, args=(0.3,)).start()
cli._exit_now(3)
print(", then returned", end="")
sys.exit(4)
"""


def test_the_command_line_ends_without_the_interpreters_teardown():
    """From the command line, the process ends once the command is done (Python's teardown of
    Numba's registries cost 0.13-0.25 s), after the exit handlers and with its output; where
    a thread of the command still runs, ``_exit_now`` returns and Python exits as usual."""
    got = {}
    for case in ("alone", "thread"):
        out = subprocess.run(
            [sys.executable, "-c", EXIT_PROBE, case], capture_output=True, text=True
        )
        got[case] = (out.returncode, out.stdout)
    assert got["alone"] == (3, "the command's output and the exit handler's")
    assert got["thread"] == (4, "the command's output, then returned and the exit handler's")


def test_main_called_with_arguments_returns(capsys):
    """A program that calls ``main(argv)`` gets the status back; the process goes on."""
    assert main(["check", LENET]) == 0
    assert "lenet5" in capsys.readouterr().out
