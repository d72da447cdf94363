"""Network parameters: defaults, ``--set`` overrides, located errors, use in ``* depth``."""

from __future__ import annotations

import json

import pytest

import cnnc
from cnnc.cli import main

SPEC = """
block stage(x, c) {
    return x | conv(c, k=3, p=1) | relu
}

network net(x: 3x16x16, width=8, depth=2, drop=0.5) {
    y = x | conv(width, k=3, p=1) | relu | stage(width * 2) * depth
    return y | gap | flatten | dropout(p=drop) | fc(10)
}
"""


def convs(net) -> list[int]:
    return [layer.shape[0] for layer in net.layers if layer.op == "conv"]


def test_defaults_are_used_and_reported():
    net = cnnc.load(SPEC)
    assert net.parameters == {"width": 8, "depth": 2, "drop": 0.5}
    assert convs(net) == [8, 16, 16]
    assert net.to_json()["parameters"] == {"width": 8, "depth": 2, "drop": 0.5}


def test_overrides_change_width_and_repeat_count():
    net = cnnc.load(SPEC, params={"width": 4, "depth": 3})
    assert convs(net) == [4, 8, 8, 8]
    assert cnnc.load(SPEC, params={"depth": 0}).parameters["depth"] == 0
    assert convs(cnnc.load(SPEC, params={"depth": "0"})) == [8]
    assert cnnc.load(SPEC, params={"drop": "0"}).parameters["drop"] == 0.0


@pytest.mark.parametrize(
    "params, column, fragment",
    [
        ({"width": "1.5"}, 25, "'width' is an integer (default 8)"),
        ({"width": "abc"}, 25, "'width' is an integer"),
        ({"drop": "x"}, 43, "'drop' is a number (default 0.5)"),
        ({"depth": "-1"}, None, "repeat count must be a non-negative integer"),
    ],
)
def test_wrong_types_are_located_errors(params, column, fragment):
    with pytest.raises(cnnc.SpecError) as info:
        cnnc.load(SPEC, params=params)
    (d,) = info.value.diagnostics
    assert fragment in d.message
    if column is not None:
        assert (d.location.line, d.location.column) == (6, column)


def test_unknown_name_is_located_with_a_suggestion():
    with pytest.raises(cnnc.SpecError) as info:
        cnnc.load(SPEC, params={"widht": 4})
    (d,) = info.value.diagnostics
    assert "has no parameter 'widht'" in d.message and d.location.line == 6
    assert "did you mean 'width'?" in d.hint


@pytest.mark.parametrize(
    "header, fragment",
    [
        ("network n(x: 3x8x8, w)", "network parameter 'w' needs a default value"),
        ("network n(w=2, x: 3x8x8)", "network parameter 'w' comes before an input"),
        ("network n(x: 3x8x8, w=true)", "must default to a number, got true"),
        ("network n(x: 3x8x8, x=2)", "declares 'x' twice"),
    ],
)
def test_bad_declarations(header, fragment):
    with pytest.raises(cnnc.SpecError) as info:
        cnnc.load(header + " {\n    return x | conv(4, k=1)\n}\n")
    assert any(fragment in d.message for d in info.value.diagnostics)


def test_network_used_as_a_block_takes_its_parameters():
    spec = (
        SPEC
        + """
network outer(img: 3x16x16) {
    return img | net(width=2, depth=1)
}
"""
    )
    outer = cnnc.load(spec, network="outer")
    assert convs(outer) == [2, 4]


def test_cli_set_in_check_run_and_bench(tmp_path, capsys):
    path = tmp_path / "p.cnn"
    path.write_text(SPEC)
    assert main(["check", str(path), "--set", "width=4", "--set", "depth=1"]) == 0
    assert "network net(x: 3x16x16, width=4, depth=1, drop=0.5)" in capsys.readouterr().out
    assert main(["check", str(path), "--json", "--set", "depth=3"]) == 0
    assert json.loads(capsys.readouterr().out)["networks"][0]["parameters"]["depth"] == 3
    out = tmp_path / "y.npy"
    assert main(["run", str(path), "--set", "width=4", "--out", str(out)]) == 0
    assert main(["bench", str(path), "--set", "depth=0", "--repeat", "1", "--json"]) == 0
    assert main(["draw", str(path), "--set", "depth=0", "-o", str(tmp_path / "p.dot")]) == 0
    assert "stage" not in (tmp_path / "p.dot").read_text()
    capsys.readouterr()
    assert main(["check", str(path), "--set", "widht=4"]) == 1
    assert "p.cnn:6:1: error: network 'net' has no parameter 'widht'" in capsys.readouterr().err
    assert main(["check", str(path), "--set", "width"]) == 2
    assert "write NAME=VALUE" in capsys.readouterr().err
    assert main(["check", str(path), "--set", "width=2", "--set", "width=3"]) == 2
