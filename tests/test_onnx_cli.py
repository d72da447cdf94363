"""`cnnc export` and `cnnc import` on the command line: outputs, exit codes, nothing written
on failure, and the message without the onnx extra."""

from __future__ import annotations

import sys

import numpy as np
import pytest
from onnx_helpers import onnx, ort_run

from cnnc.cli import main
from conftest import SPECS

SPEC = """network tiny(x: 3x12x12) {
    y = x | conv(8, k=3, s=2, p=1) | bn | silu
    z = y | dwconv(k=3, p=1) | hardswish
    return add(y, z) | gap | flatten | fc(5)
}
"""


@pytest.fixture
def spec(tmp_path):
    path = tmp_path / "tiny.cnn"
    path.write_text(SPEC)
    return path


def test_export_import_run_round_trip(spec, tmp_path, capsys):
    onnx()
    model_path, back = tmp_path / "tiny.onnx", tmp_path / "back.cnn"
    weights, weights_back = tmp_path / "w.npz", tmp_path / "back.npz"
    assert main(["run", str(spec), "--save-weights", str(weights)]) == 0
    assert main(["export", str(spec), "--weights", str(weights), "-o", str(model_path)]) == 0
    assert f"wrote {model_path}: network tiny, opset 17" in capsys.readouterr().out
    args = ["import", str(model_path), "-o", str(back), "--weights-out", str(weights_back)]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert f"wrote {back}: network tiny, " in out and f"wrote {weights_back}" in out
    x = np.random.default_rng(0).standard_normal((2, 3, 12, 12)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    out_npy = tmp_path / "y.npy"
    run = ["run", str(back), "--weights", str(weights_back), "--input", str(tmp_path / "x.npy")]
    assert main([*run, "--out", str(out_npy)]) == 0
    want = ort_run(model_path.read_bytes(), {"x": x})["out"]
    np.testing.assert_allclose(np.load(out_npy), want, rtol=1e-4, atol=1e-5)


def test_import_prints_the_spec_without_output(spec, tmp_path, capsys):
    onnx()
    model_path = tmp_path / "tiny.onnx"
    assert main(["export", str(spec), "-o", str(model_path), "--opset", "20"]) == 0
    capsys.readouterr()
    assert main(["import", str(model_path)]) == 0
    text = capsys.readouterr().out
    assert text.startswith("network tiny(x: 3x12x12) {") and "| silu" in text


def test_usage_errors_exit_2_and_write_nothing(spec, tmp_path, capsys):
    onnx()
    assert main(["export", str(spec), "-o", str(tmp_path / "a.onx")]) == 2
    assert "-o must name a .onnx file" in capsys.readouterr().err
    assert main(["export", str(spec), "-o", str(tmp_path / "a.onnx"), "--opset", "9"]) == 2
    assert "cannot export to opset 9" in capsys.readouterr().err
    assert main(["import", str(tmp_path / "m.onnx"), "-o", str(tmp_path / "x.txt")]) == 2
    assert list(tmp_path.iterdir()) == [spec]


def test_unsupported_model_exits_1_and_keeps_existing_outputs(tmp_path, capsys):
    h = onnx().helper
    node = h.make_node("Sin", ["x"], ["y"], name="sine")
    graph = h.make_graph(
        [node],
        "g",
        [h.make_tensor_value_info("x", 1, ["N", 3, 4, 4])],
        [h.make_tensor_value_info("y", 1, None)],
    )
    path = tmp_path / "sin.onnx"
    path.write_bytes(
        h.make_model(graph, opset_imports=[h.make_opsetid("", 17)]).SerializeToString()
    )
    out = tmp_path / "out.cnn"
    out.write_text("keep me")
    assert (
        main(["import", str(path), "-o", str(out), "--weights-out", str(tmp_path / "w.npz")]) == 1
    )
    err = capsys.readouterr().err
    assert "cnnc: error: ONNX Sin (1 node, first 'sine'): no .cnn equivalent" in err
    assert out.read_text() == "keep me" and not (tmp_path / "w.npz").exists()


def test_bad_spec_exits_1_before_exporting(tmp_path, capsys):
    onnx()
    bad = tmp_path / "bad.cnn"
    bad.write_text("network n(x: 3x4x4) {\n  return x | conv(2)\n}\n")
    assert main(["export", str(bad), "-o", str(tmp_path / "n.onnx")]) == 1
    assert "bad.cnn:2:" in capsys.readouterr().err
    assert not (tmp_path / "n.onnx").exists()


def test_without_the_onnx_extra_the_commands_say_how_to_install(
    spec, tmp_path, capsys, monkeypatch
):
    monkeypatch.setitem(sys.modules, "onnx", None)  # import onnx now raises ImportError
    for args in (
        ["export", str(spec), "-o", str(tmp_path / "t.onnx")],
        ["import", str(tmp_path / "t.onnx")],
    ):
        assert main(args) == 2
        err = capsys.readouterr().err
        assert "needs the 'onnx' package" in err and 'pip install "cnnc[onnx]"' in err


def test_specs_export_from_the_command_line(tmp_path, capsys):
    onnx()
    out = tmp_path / "lenet.onnx"
    assert main(["export", str(SPECS / "lenet5.cnn"), "-o", str(out), "--seed", "4"]) == 0
    model = onnx().load(str(out))
    assert [o.name for o in model.graph.output] == ["out"]


REPEATED = """block unit(x, c) {
    y = x | conv(c, k=3, p=1) | bn | relu | conv(c, k=3, p=1) | bn
    return add(x, y) | relu
}
network twice(x: 4x8x8) {
    a = x | unit(4) | unit(4)
    return a | conv(6, k=1) | relu | unit(6) | gap | flatten | fc(3)
}
"""


def test_import_blocks_writes_a_block_and_weights_named_after_it(tmp_path, capsys):
    onnx()
    spec = tmp_path / "twice.cnn"
    spec.write_text(REPEATED)
    model_path, back, weights_back = tmp_path / "t.onnx", tmp_path / "b.cnn", tmp_path / "b.npz"
    assert main(["export", str(spec), "-o", str(model_path)]) == 0
    args = ["import", str(model_path), "-o", str(back), "--weights-out", str(weights_back)]
    assert main([*args, "--blocks"]) == 0
    text = back.read_text()
    assert text.startswith("block residual(x, c) {") and text.count("| residual(") == 3, text
    keys = set(np.load(weights_back).files)
    assert "a.residual2/y_conv1.bn2.running_var" in keys, sorted(keys)
    x = np.random.default_rng(0).standard_normal((2, 4, 8, 8)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    out_npy = tmp_path / "y.npy"
    run = ["run", str(back), "--weights", str(weights_back), "--input", str(tmp_path / "x.npy")]
    assert main([*run, "--out", str(out_npy)]) == 0
    want = ort_run(model_path.read_bytes(), {"x": x})
    np.testing.assert_allclose(np.load(out_npy), next(iter(want.values())), rtol=1e-4, atol=1e-5)
