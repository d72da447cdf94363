"""`cnnc draw`: structure of the rendered SVG, collapse, formats, and failure without Graphviz."""

from __future__ import annotations

import shutil
import xml.etree.ElementTree as ET

import pytest

import cnnc
from cnnc.cli import main
from conftest import SPECS, require_dot

SVG = "{http://www.w3.org/2000/svg}"


def svg_groups(path, cls):
    root = ET.parse(path).getroot()
    return [g for g in root.iter(f"{SVG}g") if g.get("class") == cls]


def texts(group):
    return " ".join(t.text or "" for t in group.iter(f"{SVG}text"))


def test_lenet_svg_has_one_node_per_layer_and_shapes_on_edges(tmp_path):
    require_dot()
    out = tmp_path / "lenet.svg"
    assert main(["draw", str(SPECS / "lenet5.cnn"), "-o", str(out)]) == 0
    net = cnnc.load(SPECS / "lenet5.cnn")
    nodes = svg_groups(out, "node")
    # layers + the input + the output + the legend
    assert len(nodes) == len(net.layers) + 1 + 1 + 1
    labels = [texts(n) for n in nodes]
    assert any("conv 5x5, 6" in t and "156 params" in t for t in labels)
    assert any("avgpool 2x2 /2" in t for t in labels)
    assert any("input x" in t for t in labels) and any("output out" in t for t in labels)
    edges = [texts(e) for e in svg_groups(out, "edge")]
    assert "6x28x28" in " ".join(edges) and len(edges) == len(net.layers) + 1


def test_block_instances_are_nested_clusters(tmp_path):
    require_dot()
    net = cnnc.load(SPECS / "resnet.cnn", network="resnet18")
    out = net.draw(tmp_path / "r18.svg")
    clusters = svg_groups(out, "cluster")
    assert len(clusters) == len(net.instances)
    titles = [texts(c) for c in clusters]
    assert any("basic_down(c=128, s=2)" in t for t in titles)


def test_nested_blocks_nest_clusters():
    text = (
        "block inner(x) { return x | relu }\nblock outer(x) { return x | inner | inner }\n"
        "network n(x: 3x8x8) {\n  return x | outer\n}\n"
    )
    dot = cnnc.draw(cnnc.load(text)).source
    outer_at = dot.index("outer()")
    assert dot.count("subgraph cluster_") == 3
    assert dot.index("inner()") > outer_at


def test_collapse_draws_each_top_level_instance_as_one_node(tmp_path):
    require_dot()
    net = cnnc.load(SPECS / "resnet.cnn", network="resnet50")
    out = tmp_path / "r50.svg"
    assert (
        main(
            [
                "draw",
                str(SPECS / "resnet.cnn"),
                "--network",
                "resnet50",
                "--collapse",
                "-o",
                str(out),
            ]
        )
        == 0
    )
    top = {layer.block_path[0].name for layer in net.layers if layer.block_path}
    loose = [layer for layer in net.layers if not layer.block_path]
    nodes = svg_groups(out, "node")
    assert len(nodes) == len(top) + len(loose) + 1 + 1 + 1
    assert not svg_groups(out, "cluster")
    assert any(
        "bottleneck_down(c=128, s=2, g=1, wpg=64, d=1)" in texts(n) and "MACs" in texts(n)
        for n in nodes
    )


@pytest.mark.parametrize(
    "suffix, magic", [(".png", b"\x89PNG"), (".pdf", b"%PDF"), (".svg", b"<?xml")]
)
def test_formats_follow_the_suffix(tmp_path, suffix, magic):
    require_dot()
    out = tmp_path / f"unet{suffix}"
    assert main(["draw", str(SPECS / "unet.cnn"), "-o", str(out), "--rankdir", "LR"]) == 0
    assert out.read_bytes().startswith(magic)


def test_dot_needs_no_graphviz_and_others_fail_cleanly(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    dot = tmp_path / "g.dot"
    assert main(["draw", str(SPECS / "lenet5.cnn"), "-o", str(dot)]) == 0
    assert dot.read_text().startswith("digraph lenet5")
    keep = tmp_path / "keep.png"
    keep.write_bytes(b"precious")
    assert main(["draw", str(SPECS / "lenet5.cnn"), "-o", str(keep)]) == 1
    err = capsys.readouterr().err
    assert "Graphviz" in err and "apt-get install graphviz" in err and ".dot" in err
    assert keep.read_bytes() == b"precious"
    assert not list(tmp_path.glob(".keep*"))


def test_unknown_suffix_is_a_usage_error(tmp_path, capsys):
    assert main(["draw", str(SPECS / "lenet5.cnn"), "-o", str(tmp_path / "x.jpg")]) == 2
    assert "suffix" in capsys.readouterr().err


def test_api_returns_graphviz_object():
    import graphviz

    g = cnnc.draw(cnnc.load(SPECS / "lenet5.cnn"), rankdir="LR")
    assert isinstance(g, graphviz.Digraph) and "rankdir=LR" in g.source


def test_resnet152_renders(tmp_path):
    require_dot()
    net = cnnc.load(SPECS / "resnet.cnn", network="resnet152")
    out = net.draw(tmp_path / "r152.svg")
    assert len(svg_groups(out, "node")) == len(net.layers) + 3


def test_modern_ops_are_drawn_with_their_family_colours(tmp_path):
    """An MBConv block: depthwise conv, silu, the SE gate's mul, drop path, each styled."""
    require_dot()
    from cnnc.compiler.draw import PALETTE

    net = cnnc.load(SPECS / "efficientnet.cnn", network="mbconv_se")
    out = net.draw(tmp_path / "mbconv.svg")
    nodes = svg_groups(out, "node")
    labels = [texts(n) for n in nodes]
    for label in ("dwconv 5x5", "silu", "mul", "sigmoid", "droppath 0.2", "gap"):
        assert any(label in t for t in labels), label
    mul = next(n for n in nodes if "mul" in texts(n).split())
    fills = {p.get("fill") for p in mul.iter(f"{SVG}path")}
    assert PALETTE["merge"][0] in fills
    edges = " ".join(texts(e) for e in svg_groups(out, "edge"))
    assert "240x1x1" in edges and "240x28x28" in edges
