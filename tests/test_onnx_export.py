"""`cnnc export`: every op and every spec family exported, checked by onnx.checker (full check)
and run by ONNX Runtime against `cnnc.run` (relative 1e-4); exports imported back unchanged."""

from __future__ import annotations

import re

import pytest
from onnx_helpers import assert_close, export_and_compare, onnx

import cnnc
from cnnc.compiler.ops import OPS
from conftest import SPECS


def one_stage(stage: str, shape: str) -> str:
    return f"network t(x: {shape}) {{\n  return x | {stage}\n}}\n"


@pytest.mark.parametrize("name", sorted(OPS))
def test_every_op_exports_and_runs_in_onnx_runtime(name):
    op = OPS[name]
    export_and_compare(cnnc.load(one_stage(op.example or name, op.example_input)), spread=3.0)


VARIANTS = [
    "conv(4, k=3, p=same, d=2)",
    "conv(6, k=(3, 1), s=(2, 1), g=3, bias=false)",
    "dwconv(k=3, s=2, p=1, m=2)",
    "convt(4, k=3, s=2, p=1, op=1, g=2)",
    "maxpool(k=3, s=2, p=1, ceil=true)",
    "avgpool(k=3, s=2, p=1, ceil=true, count_pad=false)",
    "adaptive_avgpool((3, 4))",
    "adaptive_avgpool(1)",
    "upsample(3, mode=bilinear)",
    "resize(size=(1, 3))",
    "resize(size=(11, 3), mode=nearest)",
    "gelu(approx=tanh)",
    "clamp(hi=0.3)",
    "prelu(shared=true)",
    "pad(2, mode=replicate)",
    "lrn(size=5, alpha=0.01, beta=0.5, k=2)",
    "mul(x | gap | sigmoid, x | gap | sigmoid | slice(0, 1) | gap)",
    "add(x, x | relu, x | tanh)",
    "shuffle(2) | slice(2, 6) | groupnorm(2)",
    "gap | flatten | layernorm | scale(0.5) | softmax",
]


@pytest.mark.parametrize("stage", VARIANTS)
def test_export_variants(stage):
    export_and_compare(cnnc.load(one_stage(stage, "6x9x8")), spread=3.0)


@pytest.mark.parametrize("opset", [18, 20, 21])
def test_newer_opsets_use_native_ops(opset):
    net = cnnc.load(one_stage("gelu | mish | gelu(approx=tanh)", "4x5x5"))
    model = export_and_compare(net, opset=opset)[0]
    types = {n.op_type for n in model.graph.node}
    assert ("Gelu" in types) == (opset >= 20) and ("Mish" in types) == (opset >= 18)


def test_names_batch_and_blocks_survive():
    spec = """
    block unit(x, c) {
        y = x | conv(c, k=3, p=1) | bn | relu
        return add(x, y)
    }
    network twin(left: 4x6x6, right: 4x6x6) {
        a = left | unit(4)
        b = right | unit(4)
        return a, concat(a, b) | gap | flatten | fc(3)
    }
    """
    net = cnnc.load(spec)
    model = export_and_compare(net)[0]
    graph = model.graph
    assert [i.name for i in graph.input] == ["left", "right"]
    assert [o.name for o in graph.output] == list(net.outputs)
    assert graph.input[0].type.tensor_type.shape.dim[0].dim_param == "N"
    assert any(n.name.startswith("a.unit/y.conv") for n in graph.node)
    inits = {i.name for i in graph.initializer}
    assert "a.unit/y.bn.running_var" in inits


def _cheapest(path):
    return min(cnnc.load_all(path), key=lambda n: n.total_macs)


FAMILIES = sorted(p.name for p in SPECS.glob("*.cnn"))
#: families whose cheapest network takes 20 s or more here (2 cores): at full size under
#: -m slow, at a small input in CI (below)
HEAVY = {"segmentation.cnn", "multiscale_seg.cnn", "unet.cnn", "vgg.cnn"}


@pytest.mark.parametrize(
    "family", [pytest.param(f, marks=pytest.mark.slow) if f in HEAVY else f for f in FAMILIES]
)
def test_one_network_per_family_exports_runs_and_imports_back(family):
    net = _cheapest(SPECS / family)
    check_round_trip(net, batch=1)


#: the input size (H, W) at which each heavy family's cheapest network runs in CI: the
#: smallest its architecture takes (U-Net's unpadded convolutions need 16k + 92, 188 the least)
SMALL_INPUT = {"segmentation.cnn": 32, "multiscale_seg.cnn": 32, "unet.cnn": 188, "vgg.cnn": 32}


@pytest.mark.parametrize("family", sorted(HEAVY))
def test_heavy_family_at_a_small_input_exports_runs_and_imports_back(family):
    net = _cheapest(SPECS / family)
    small = _at_input_size(SPECS / family, net.name, SMALL_INPUT[family])
    assert small.total_macs < net.total_macs / 10
    check_round_trip(small, batch=1)


def _at_input_size(path, name, size):
    """The network ``name`` of the spec at ``path`` with an input of ``size`` x ``size``: the
    header rewritten and the shape assertions (` : CxHxW` at a line's end) dropped."""
    from cnnc.compiler.program import Program
    from cnnc.compiler.source import SourceFile

    text = path.read_text()
    header = re.compile(rf"(network {name}\(\s*\w+\s*:\s*\d+)x\d+x\d+")
    assert header.search(text), name
    text = header.sub(rf"\g<1>x{size}x{size}", text)
    text = re.sub(r"[ \t]*:[ \t]*\d+(?:x\d+)*[ \t]*(?=(#.*)?$)", "", text, flags=re.M)
    program = Program.load(SourceFile(str(path), text, path.resolve()))
    net = cnnc.network_of(program, name)
    assert next(iter(net.inputs.values())).shape[1:] == (size, size)
    return net


#: weights above ONNX's 2 GiB: export refuses them with a clear error (tested below)
TOO_LARGE = {"regnet_y_128gf"}


#: EfficientNet-B7/V2-S/V2-M and RegNetY-1.6GF were strict xfails with identity batch norm
#: (activations to 7e8; cnnc, torch and ORT 16% to 100% apart); with calibrated_weights their
#: outputs are ~1.7 and cnnc-ORT differ by 4e-6, 1.4e-6, 2.8e-6 and 4.5e-7 (relative)
def _every_network():
    for family in FAMILIES:
        for net in cnnc.load_all(SPECS / family):
            if net.name not in TOO_LARGE:
                yield pytest.param(family, net.name)


@pytest.mark.slow
@pytest.mark.parametrize("family,name", list(_every_network()))
def test_every_spec_network_exports_runs_and_imports_back(family, name):
    check_round_trip(cnnc.load(SPECS / family, name), batch=1)


def check_round_trip(net, batch, seeded=True):
    """Export, run in ORT against cnnc, import back: same params, MACs and outputs."""
    from cnnc.interchange.onnx_import import import_model

    model, weights, inputs, want = export_and_compare(net, batch=batch, seeded=seeded)
    text, weights2, net2 = import_model(model, net.name)
    assert (net2.total_params, net2.total_macs) == (net.total_params, net.total_macs), text
    assert list(net2.outputs) == list(net.outputs)
    got = cnnc.run(net2, dict(zip(net2.inputs, inputs.values())), weights2)
    assert_close(got, want, net.name)


@pytest.mark.parametrize("name", sorted(OPS))
def test_every_op_imports_back(name):
    op = OPS[name]
    check_round_trip(cnnc.load(one_stage(op.example or name, op.example_input)), 2, seeded=False)


def test_export_writes_atomically_and_checks_the_suffix(tmp_path):
    onnx()
    net = cnnc.load(one_stage("conv(3, k=3) | relu", "2x5x5"))
    with pytest.raises(cnnc.CnncError, match="must be an .onnx file"):
        cnnc.export_onnx(net, tmp_path / "net.onx")
    out = tmp_path / "net.onnx"
    model = cnnc.export_onnx(net, out, seed=3)
    assert out.read_bytes() == model.SerializeToString()
    assert [p.name for p in tmp_path.iterdir()] == ["net.onnx"]


def test_export_rejects_unknown_opsets():
    net = cnnc.load(one_stage("relu", "2x5x5"))
    with pytest.raises(cnnc.CnncError, match="opset 16"):
        cnnc.export_onnx(net, opset=16)


@pytest.mark.slow
def test_weights_over_two_gib_are_refused_clearly(tmp_path):
    net = cnnc.load(SPECS / "regnet.cnn", "regnet_y_128gf")
    out = tmp_path / "big.onnx"
    with pytest.raises(cnnc.CnncError, match="an ONNX file holds at most 2 GiB"):
        cnnc.export_onnx(net, out)
    assert not out.exists()
