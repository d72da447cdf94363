"""`cnnc import`: ONNX files nobody here wrote (the model zoo networks in the onnx wheel,
torchvision models exported by torch.onnx) imported, checked, drawn and run against ONNX
Runtime; unsupported graphs reported at once."""

from __future__ import annotations

import io
import re
from pathlib import Path

import numpy as np
import pytest
from onnx_helpers import assert_close, onnx, ort_run

import cnnc

LIGHT = [
    "bvlc_alexnet",
    "densenet121",
    "inception_v1",
    "inception_v2",
    "resnet50",
    "shufflenet",
    "squeezenet",
    "vgg19",
    "zfnet512",
]
#: under -m slow: the heaviest to run on two cores
LIGHT_HEAVY = {"vgg19", "densenet121", "inception_v2", "resnet50", "zfnet512", "bvlc_alexnet"}


def light_path(name) -> Path:
    return Path(onnx().__file__).parent / "backend/test/data/light" / f"light_{name}.onnx"


def with_random_weights(model, seed=0):
    """The light models fill every weight with one constant (0.02), which makes logits of
    ~1e9 whose softmax is decided by float32 rounding; give their weights He-normal values
    instead (the graph, which is the point of these files, is unchanged)."""
    on = onnx()
    rng = np.random.default_rng(seed)
    model = on.ModelProto.FromString(model.SerializeToString())
    weights = {
        n.input[i]: n.op_type
        for n in model.graph.node
        if n.op_type in ("Conv", "Gemm", "BatchNormalization")
        for i in range(1, len(n.input))
    }
    kept = []
    for node in model.graph.node:
        if node.op_type == "ConstantOfShape" and node.output[0] in weights:
            shape = [int(d) for d in _constant(model, node.input[0])]
            if len(shape) >= 2:
                value = rng.standard_normal(shape) * np.sqrt(2.0 / np.prod(shape[1:]))
            else:
                value = rng.uniform(0.5, 1.5, shape)
            init = on.numpy_helper.from_array(value.astype(np.float32), node.output[0])
            model.graph.initializer.append(init)
        else:
            kept.append(node)
    del model.graph.node[:]
    model.graph.node.extend(kept)
    return model


def _constant(model, name):
    for init in model.graph.initializer:
        if init.name == name:
            return onnx().numpy_helper.to_array(init)
    raise KeyError(name)


def data_input(model):
    inits = {i.name for i in model.graph.initializer}
    return next(i.name for i in model.graph.input if i.name not in inits)


def compare_with_ort(model, name, rtol=1e-4):
    text, weights, net = cnnc.import_onnx(model, name)
    x = np.random.default_rng(0).standard_normal((1, *next(iter(net.input_shapes.values()))))
    x = x.astype(np.float32)
    want = ort_run(model, {data_input(model): x})
    got = cnnc.run(net, {next(iter(net.inputs)): x}, weights)
    assert_close(dict(zip(want, got.values())), want, name, rtol)
    return text, net


@pytest.mark.parametrize("name", LIGHT)
def test_light_models_import_check_and_draw(name):
    text, weights, net = cnnc.import_onnx(light_path(name))
    assert cnnc.load(text).total_params == net.total_params > 0
    assert "digraph" in cnnc.draw(net).source
    assert set(weights) == {
        f"{layer.name}.{k}" for layer in net.layers for k in (*layer.weights, *layer.buffers)
    }


#: parameters and MACs of the light models, as cnnc counts them (torchvision's convention)
LIGHT_COSTS = {
    "resnet50": (25557032, 4089184256),
    "densenet121": (7978856, 2834161664),
    "squeezenet": (1235496, 349151936),
}


@pytest.mark.parametrize("name", sorted(LIGHT_COSTS))
def test_light_model_costs(name):
    net = cnnc.import_onnx(light_path(name))[2]
    assert (net.total_params, net.total_macs) == LIGHT_COSTS[name]


@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=pytest.mark.slow) if n in LIGHT_HEAVY else n for n in LIGHT]
)
def test_light_models_run_like_onnx_runtime(name):
    model = with_random_weights(onnx().load(str(light_path(name))))
    compare_with_ort(model, name)


# ---- torchvision through torch.onnx ---------------------------------------------------------

TORCHVISION = [
    "resnet50",
    "mobilenet_v3_large",
    "efficientnet_b0",
    "convnext_tiny",
    "shufflenet_v2_x1_0",
    "regnet_y_400mf",
    "inception_v3",
    "lraspp_mobilenet_v3_large",
    "densenet121",
    "googlenet",
    "mnasnet0_5",
    "squeezenet1_0",
    "vgg11_bn",
    "alexnet",
    "resnext50_32x4d",
]


def torch_export(torch, torchvision, name, opset=17, size=None):
    """torch 2.13's exporter: the TorchScript path (``dynamo=False``) needs nothing beyond
    torch and onnx; the dynamo path needs onnxscript, not installed here."""
    import warnings

    models = torchvision.models
    if name.startswith("lraspp"):
        model = models.segmentation.lraspp_mobilenet_v3_large(weights=None, weights_backbone=None)
    else:
        model = getattr(models, name)(weights=None)
    torch.manual_seed(0)
    for m in model.modules():  # non-trivial statistics, as trained models have
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    model.eval()
    size = size or (299 if name == "inception_v3" else 224)
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (torch.randn(1, 3, size, size),),
            buffer,
            dynamo=False,
            opset_version=opset,
            input_names=["x"],
            dynamic_axes={"x": {0: "N"}},
        )
    return onnx().load_from_string(buffer.getvalue())


@pytest.mark.parametrize(
    "name",
    [n if n == "regnet_y_400mf" else pytest.param(n, marks=pytest.mark.slow) for n in TORCHVISION],
)
def test_torchvision_models_exported_by_torch_onnx(torch, torchvision, name):
    model = torch_export(torch, torchvision, name)
    text, net = compare_with_ort(model, name)
    assert "$" not in text and net.total_params > 0


# ---- repeated structures as blocks ----------------------------------------------------------


def import_with_blocks(model, name):
    """Import flat and with blocks: same layers in the same order with the same weights, same
    params, MACs and outputs, which match ONNX Runtime's; return the text with blocks."""
    flat_text, flat_weights, flat = cnnc.import_onnx(model, name)
    text, weights, net = cnnc.import_onnx(model, name, blocks=True)
    assert (net.total_params, net.total_macs) == (flat.total_params, flat.total_macs)
    assert [a.op for a in net.layers] == [b.op for b in flat.layers]
    for a, b in zip(net.layers, flat.layers):
        for key in (*a.weights, *a.buffers):
            assert np.array_equal(weights[f"{a.name}.{key}"], flat_weights[f"{b.name}.{key}"])
    assert set(weights) == {
        f"{layer.name}.{k}" for layer in net.layers for k in (*layer.weights, *layer.buffers)
    }
    x = np.random.default_rng(0).standard_normal((1, *next(iter(net.input_shapes.values()))))
    x = x.astype(np.float32)
    got = cnnc.run(net, {next(iter(net.inputs)): x}, weights)
    want = cnnc.run(flat, {next(iter(flat.inputs)): x}, flat_weights)
    assert_close(dict(zip(want, got.values())), want, name, rtol=1e-6)
    ort = ort_run(model, {data_input(model): x})
    assert_close(dict(zip(ort, got.values())), ort, name)
    assert len(text.splitlines()) <= len(flat_text.splitlines())
    return text


#: torchvision models whose import has no repeated single-entry, single-exit structure: dense
#: blocks concatenate every earlier map, LR-ASPP's head reads an early map, VGG and AlexNet
#: are plain chains
NO_BLOCKS = {"densenet121", "lraspp_mobilenet_v3_large", "vgg11_bn", "alexnet"}


@pytest.mark.slow
@pytest.mark.parametrize("name", TORCHVISION)
def test_torchvision_models_import_with_blocks(torch, torchvision, name):
    text = import_with_blocks(torch_export(torch, torchvision, name), name)
    assert ("block " in text) == (name not in NO_BLOCKS), text


def test_blocks_fold_a_torchvision_resnet(torch, torchvision):
    text = import_with_blocks(torch_export(torch, torchvision, "resnet18", size=64), "resnet18")
    # the basic unit, and the first of stages 2-4 (strided, with a projection shortcut)
    assert re.findall(r"^block (\w+)\(x, c\)", text, re.M) == ["residual", "residual_b"]
    assert "downsample" in text.split("block residual_b")[1].split("network")[0]
    assert "    layer1 = conv1 | residual(64) | residual(64)\n" in text, text
    assert "    layer4 = layer3 | residual_b(512) | residual(512)\n" in text, text
    assert len(re.findall(r"\| residual", text)) == 8, text
    assert len(text.splitlines()) == 22, text  # 23 flat, in longer statements


def test_blocks_fold_a_torchvision_mobilenet(torch, torchvision):
    model = torch_export(torch, torchvision, "mobilenet_v2", size=64)
    text = import_with_blocks(model, "mobilenet_v2")
    # the inverted residual units with a skip connection (10 of 17): one block, two channel
    # counts; the units without one are chains, written in line
    (block,) = re.findall(r"^block \w+\(x, c1, c2\) \{\n(.*?)^\}", text, re.M | re.S)
    assert "dwconv" in block and "add(" in block
    assert len(re.findall(r"\| residual\(", text)) == 10, text


def test_blocks_fold_a_spec_exported_by_cnnc():
    from conftest import SPECS

    net = cnnc.load(SPECS / "cifar_resnet.cnn")
    text = import_with_blocks(cnnc.export_onnx(net), "cifar_resnet")
    assert len(re.findall(r"\| residual", text)) == 9, text


# ---- what cannot be imported ----------------------------------------------------------------


def _model(nodes, inputs, outputs, inits=(), opset=17):
    h = onnx().helper
    graph = h.make_graph(nodes, "g", inputs, outputs, list(inits))
    return h.make_model(graph, opset_imports=[h.make_opsetid("", opset)])


def _value(name, shape):
    return onnx().helper.make_tensor_value_info(name, 1, shape)


def test_everything_unsupported_is_reported_at_once():
    h = onnx().helper
    nodes = [
        h.make_node("Relu", ["x"], ["a"], name="first_relu"),
        h.make_node("Sin", ["a"], ["b"], name="sin1"),
        h.make_node("Sin", ["b"], ["c"], name="sin2"),
        h.make_node("TopK", ["c", "k"], ["d", "i"], name="topk"),
    ]
    k = onnx().numpy_helper.from_array(np.array([2], np.int64), "k")
    model = _model(nodes, [_value("x", ["N", 3, 4, 4])], [_value("d", None)], [k])
    with pytest.raises(cnnc.DataError) as info:
        cnnc.import_onnx(model)
    text = info.value.format()
    assert "ONNX Sin (2 nodes, first 'sin1'): no .cnn equivalent" in text
    assert "ONNX TopK (1 node, first 'topk')" in text


def test_unsupported_attributes_name_the_reason():
    h = onnx().helper
    w = onnx().numpy_helper.from_array(np.ones((4, 3, 3, 3), np.float32), "w")
    nodes = [
        h.make_node("Conv", ["x", "w"], ["y"], name="conv"),
        h.make_node("Softmax", ["y"], ["z"], name="soft", axis=3),
    ]
    model = _model(nodes, [_value("x", ["N", 3, 8, 8])], [_value("z", None)], [w])
    with pytest.raises(cnnc.DataError, match="ONNX Softmax .*softmax over axis 3"):
        cnnc.import_onnx(model)


def test_asymmetric_conv_padding_becomes_pad():
    h = onnx().helper
    w = onnx().numpy_helper.from_array(
        np.random.default_rng(0).standard_normal((4, 3, 3, 3)).astype(np.float32), "w"
    )
    nodes = [h.make_node("Conv", ["x", "w"], ["y"], name="c", pads=[0, 1, 2, 0], strides=[2, 2])]
    model = _model(nodes, [_value("x", ["N", 3, 9, 8])], [_value("y", None)], [w])
    text, _ = compare_with_ort(model, "asym")
    assert "x | pad((0, 2, 1, 0)) | conv(4, k=3, s=2, bias=false)" in text


def test_caffe2_style_constants_fold(tmp_path):
    """ConstantOfShape, Shape arithmetic and Unsqueeze on constants, as exporters write."""
    h = onnx().helper
    nodes = [
        h.make_node("Shape", ["x"], ["s"]),
        h.make_node("Gather", ["s", "zero"], ["n"], axis=0),
        h.make_node("Unsqueeze", ["n", "zero"], ["n1"]),
        h.make_node("Concat", ["n1", "minus1"], ["shape"], axis=0),
        h.make_node("GlobalAveragePool", ["x"], ["g"]),
        h.make_node("Reshape", ["g", "shape"], ["flat"]),
        h.make_node("ConstantOfShape", ["wshape"], ["w"], value=h.make_tensor("v", 1, [1], [0.5])),
        h.make_node("Gemm", ["flat", "w"], ["y"], transB=1),
    ]
    inits = [
        onnx().numpy_helper.from_array(np.array(v, np.int64), n)
        for n, v in (("zero", [0]), ("minus1", [-1]), ("wshape", [5, 3]))
    ]
    inits[0] = onnx().numpy_helper.from_array(np.array(0, np.int64), "zero")
    nodes[2] = h.make_node("Unsqueeze", ["n", "axes"], ["n1"])
    inits.append(onnx().numpy_helper.from_array(np.array([0], np.int64), "axes"))
    model = _model(nodes, [_value("x", ["N", 3, 4, 4])], [_value("y", None)], inits)
    text, net = compare_with_ort(model, "folded")
    assert [layer.op for layer in net.layers] == ["gap", "flatten", "fc"]


def test_bad_files_are_clear_errors(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x08\x07garbage" * 10)
    with pytest.raises(cnnc.DataError, match="not a valid ONNX model"):
        cnnc.import_onnx(bad)
    with pytest.raises(cnnc.DataError, match="(?i)no such file"):
        cnnc.import_onnx(tmp_path / "missing.onnx")
    model = _model([], [_value("x", ["N", 3, 4])], [_value("x", None)])
    with pytest.raises(cnnc.DataError, match=r"takes \(N, C, H, W\)"):
        cnnc.import_onnx(model)
    old = _model(
        [onnx().helper.make_node("Relu", ["x"], ["y"])], [_value("x", [1, 2])], [], opset=6
    )
    with pytest.raises(cnnc.DataError, match="opset 6"):
        cnnc.import_onnx(old)
