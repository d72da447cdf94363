"""`cnnc check --explain`: each layer's arithmetic, evaluated exactly, gives its row, on every
network of the spec library and on the corner cases of each rule; the text and JSON forms."""

from __future__ import annotations

import json

import pytest

import cnnc
from cnnc.cli import main
from conftest import SPECS
from explain_helpers import check_explained, evaluate

SPEC_FILES = sorted(p.name for p in SPECS.glob("*.cnn"))

CORNERS = """
network corners(x: 6x23x17, ref: 6x9x4) {
    a = x | conv(12, k=(3, 5), s=(2, 1), p=(1, 2), d=(2, 1), g=3, bias=false)
    b = a | maxpool(k=3, s=2, p=1, ceil=true) | avgpool(k=2, ceil=true, count_pad=false)
    c = x | dwconv(k=3, s=2, p=same, m=2) | convt(6, k=3, s=2, p=1, op=1, g=2)
    d = x | resize(ref) | resize(size=(7, 11), mode=nearest) | upsample((2, 3), mode=bilinear)
    e = d | adaptive_avgpool((4, 5)) | pad((1, 2, 0, 3)) | groupnorm(3) | shuffle(2)
    f = e | slice(1, 5) | gmp | flatten | fc(8) | prelu | scale(0.5)
    g = concat(x | crop(ref), ref)
    h = g | mul(g | gap | conv(1, k=1) | sigmoid) | add(g)
    i = x | adaptive_avgpool((4, 4)) | maxpool(k=2, s=3, p=1, ceil=true)
    return f, h, i
}
"""


def test_every_formula_of_the_corner_cases_computes_its_row():
    net = cnnc.load(CORNERS)
    for layer in (*net.inputs.values(), *net.layers):
        check_explained(layer)
    ops = {layer.op for layer in net.layers}
    assert {"conv", "dwconv", "convt", "resize", "adaptive_avgpool", "concat", "mul"} <= ops
    # a jump that is not whole: 6x9x4 resized from 23x17
    d = net.layer("d.resize1")
    assert any(j.denominator != 1 for j in d.rf.jump)
    # ceil mode dropping a last window that would start in the right padding: 4 -> 2, not 3
    (size,) = [f for f in check_explained(net.layer("i.maxpool"))["output"] if f.axes == (1, 2)]
    assert size.arithmetic.endswith(" - 1") and size.value == 2 and "dropped" in size.note


@pytest.mark.parametrize("spec", SPEC_FILES)
def test_every_layer_of_the_spec_library_is_explained(spec):
    for net in cnnc.load_all(SPECS / spec):
        for layer in (*net.inputs.values(), *net.layers):
            check_explained(layer)


def test_the_exact_evaluator_rejects_anything_but_arithmetic():
    assert evaluate("floor((224 + 2*3 - 1*(7-1) - 1) / 2) + 1") == 112
    assert evaluate("(1/3) * 3") == 1  # exact, not 0.999...
    with pytest.raises(AssertionError):
        evaluate("__import__('os')")


def test_conv_explained_as_a_lecture_writes_it(capsys):
    args = ["check", str(SPECS / "resnet.cnn"), "--network", "resnet50"]
    assert main([*args, "--explain", "stem.stem/out.conv"]) == 0
    out = capsys.readouterr().out
    assert "floor((224 + 2*3 - 1*(7-1) - 1) / 2) + 1 = 112" in out
    assert "weight = C' * C/g * kh * kw = 64 * 3 * 7 * 7 = 9,408" in out
    assert "bias = 0  (bias=false)" in out
    assert "= 64 * 112 * 112 * 3 * 7 * 7 = 118,013,952" in out
    assert "r = r_in + d(k-1) * j_in = 1 + 1*(7-1) * 1 = 7" in out
    assert "specs/resnet.cnn:8: return x | conv(64, k=7, s=2, p=3, bias=false)" in out
    assert "in block stem(), called at" in out
    assert "layer1" not in out  # only the named layer


def test_a_glob_explains_every_match_in_every_network(capsys):
    assert main(["check", str(SPECS / "resnet.cnn"), "--explain", "*fc"]) == 0
    out = capsys.readouterr().out
    for name in ("resnet18", "resnet34", "resnet50", "resnet152"):
        assert f"({name})" in out
    assert "weight = N' * N = 1000 * 2048 = 2,048,000" in out
    assert "weight = N' * N = 1000 * 512 = 512,000" in out


def test_explain_json_carries_the_same_fields(capsys):
    args = ["check", str(SPECS / "resnet.cnn"), "--network", "resnet18", "--json"]
    assert main([*args, "--explain", "stem*conv"]) == 0
    (net,) = json.loads(capsys.readouterr().out)["networks"]
    (layer,) = net["explain"]
    assert layer["name"] == "stem.stem/out.conv" and layer["params"] == 9408
    assert layer["source"][0]["line"] == 8 and layer["source"][1]["block"] == "stem()"
    parts = layer["formulas"]
    (size,) = [f for f in parts["output"] if f["quantity"] == "H', W'"]
    assert size["arithmetic"] == "floor((224 + 2*3 - 1*(7-1) - 1) / 2) + 1"
    assert size["value"] == 112 and size["rule"] == "floor((H + 2p - d(k-1) - 1) / s) + 1"
    assert sum(f["value"] for f in parts["params"]) == 9408
    assert [f["value"] for f in parts["macs"]] == [layer["macs"]] == [118_013_952]
    assert {f["quantity"]: f["value"] for f in parts["rf"]} == {"r": 7, "j": 2}
    for section in parts.values():
        for f in section:
            assert evaluate(f["arithmetic"]) == (
                tuple(f["value"]) if isinstance(f["value"], list) else f["value"]
            )


def test_unknown_layer_is_a_usage_error_with_close_names():
    from subprocess import run
    from sys import executable

    result = run(
        [executable, "-m", "cnnc", "check", str(SPECS / "lenet5.cnn"), "--explain", "c1.cnv"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "no layer of lenet5 has that name" in result.stderr
    assert "did you mean 'c1.conv'" in result.stderr


def test_layers_and_networks_repr_in_one_short_line():
    net = cnnc.load(SPECS / "resnet.cnn", network="resnet50")
    for layer in (*net.inputs.values(), *net.layers):
        text = repr(layer)
        assert "\n" not in text and len(text) < 200, text[:300]
    assert repr(net.layers[-1]) == "<Layer out.head/out.fc: fc 1000 -> 1000>"
    assert all(len(repr(i)) < 200 for i in net.instances)
    assert len(repr(net)) < 200
