"""The embedding API: load from a path or a string, the graph, JSON, errors as exceptions."""

from __future__ import annotations

import pytest

import cnnc
from conftest import SPECS

SMALL = """
block res(x, c) {
    y = x | conv(c, k=3, p=1) | relu
    return add(x, y)
}
network small(img: 3x16x16) {
    a = img | conv(8, k=3, p=1) | relu
    b = a | res(8)
    return b | gap | flatten | fc(4), a
}
"""


def test_load_from_string_and_path(tmp_path):
    net = cnnc.load(SMALL)
    path = tmp_path / "small.cnn"
    path.write_text(SMALL)
    assert cnnc.load(path).total_params == net.total_params
    assert cnnc.load(str(path)).total_macs == net.total_macs


def test_graph_nodes_carry_op_shape_costs_and_location():
    net = cnnc.load(SMALL)
    g = net.graph
    import networkx as nx

    assert isinstance(g, nx.DiGraph)
    assert list(g.nodes) == [
        "img",
        "a.conv",
        "a.relu",
        "b.res/y.conv",
        "b.res/y.relu",
        "b.res/out.add",
        "out1.gap",
        "out1.flatten",
        "out1.fc",
    ]
    node = g.nodes["b.res/y.conv"]
    assert node["op"] == "conv" and node["shape"] == (8, 16, 16)
    assert node["params"] == 8 * 8 * 9 + 8 and node["macs"] == 8 * 16 * 16 * 8 * 9
    assert (node["file"], node["line"], node["column"]) == ("<string>", 3, 13)
    assert node["block_path"] == ("b.res",)
    assert g.nodes["out1.fc"]["output"] == "out1"
    assert g.edges["a.relu", "b.res/out.add"]["shape"] == (8, 16, 16)
    assert nx.is_directed_acyclic_graph(g)


def test_outputs_named_after_returned_bindings():
    net = cnnc.load(SMALL)
    assert net.output_shapes == {"out1": (4,), "a": (8, 16, 16)}


def test_json_matches_the_contract():
    doc = cnnc.check(SMALL).to_json()
    assert set(doc) == {"networks", "diagnostics"}
    net = doc["networks"][0]
    for key in ("name", "inputs", "outputs", "layers", "total_params", "total_macs"):
        assert key in net
    assert net["inputs"] == {"img": [3, 16, 16]}
    layer = net["layers"][0]
    for key in ("name", "op", "inputs", "shape", "params", "macs", "line"):
        assert key in layer
    assert layer["inputs"] == ["img"]
    assert [entry["name"] for entry in net["layers"]][:2] == ["a.conv", "a.relu"]


def test_errors_are_exceptions_with_diagnostics():
    with pytest.raises(cnnc.SpecError) as info:
        cnnc.load("network n(x: 3x8x8) {\n  return x | fc(2)\n}\n")
    (d,) = info.value.diagnostics
    assert d.location.line == 2 and "flatten" in d.hint


def test_load_needs_a_name_when_several_networks():
    with pytest.raises(cnnc.SpecError, match=r"defines \d+ networks \(vgg_a, "):
        cnnc.load(SPECS / "vgg.cnn")
    assert cnnc.load(SPECS / "vgg.cnn", network="vgg_d").total_params == 138_357_544


def test_networks_can_be_used_as_blocks_across_imports(tmp_path):
    (tmp_path / "lib.cnn").write_text(
        "network backbone(x: 3x32x32) {\n  return x | conv(8, k=3, s=2, p=1) | relu\n}\n"
    )
    (tmp_path / "main.cnn").write_text(
        'import "lib.cnn"\nnetwork top(x: 3x32x32) {\n  return x | backbone | gap\n}\n'
    )
    net = cnnc.load(tmp_path / "main.cnn")
    assert net.output_shapes == {"out": (8, 1, 1)}
    assert net.layers[0].name == "out.backbone/out.conv"


def test_api_does_not_print(capsys):
    cnnc.check("network n(x: 3x8x8) {\n  return x | fc(2)\n}\n")
    assert capsys.readouterr() == ("", "")
