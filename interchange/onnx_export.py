"""Export a checked network to ONNX: one small emitter per op, keyed by op name like the kernel
tables (adding an op adds one entry to :data:`EMITTERS`).

Tensors are NCHW with a symbolic batch ``N``; inputs and outputs keep the spec's names; each
layer's nodes are named after the layer (``block/inner.conv``, ``.../Sigmoid``), so Netron shows
the spec's block structure. Weights are initializers keyed as in ``cnnc run --weights``
(``LAYER.weight``...). The model passes ``onnx.checker`` (full check) before it is returned.
"""

from __future__ import annotations

import math

import numpy as np

from ..compiler import ResourceError, UsageError, error
from . import require_onnx

DEFAULT_OPSET = 17
MAX_WEIGHT_BYTES = 2**31 - 2**24  # protobuf's 2 GiB per message, less room for the graph
OPSETS = range(17, 22)  # LayerNormalization needs 17; 21 is the newest ONNX Runtime runs

#: op name -> emitter(g, layer, xs, out): add the nodes computing ``out`` from ``xs``.
EMITTERS: dict = {}


def emits(*names):
    def wrap(fn):
        for name in names:
            EMITTERS[name] = fn
        return fn

    return wrap


class Graph:
    """The nodes, initializers and constants of the model being built."""

    def __init__(self, onnx, weights: dict, opset: int):
        self.onnx, self.h, self.weights, self.opset = onnx, onnx.helper, weights, opset
        self.nodes, self.initializers = [], []
        self._names: set[str] = set()

    def node(self, op_type, inputs, out, name, **attrs):
        self.nodes.append(self.h.make_node(op_type, list(inputs), [out], name=name, **attrs))
        return out

    def const(self, name, array) -> str:
        """An initializer; ``name`` is made unique."""
        unique, n = name, 1
        while unique in self._names:
            n += 1
            unique = f"{name}_{n}"
        self._names.add(unique)
        self.initializers.append(self.onnx.numpy_helper.from_array(np.asarray(array), unique))
        return unique

    def weight(self, layer, key, shape=None) -> str:
        value = self.weights[f"{layer.name}.{key}"]
        if shape is not None:
            value = value.reshape(shape)
        return self.const(f"{layer.name}.{key}", value.astype(np.float32))

    def scalar(self, layer, what, value) -> str:
        return self.const(f"{layer.name}/{what}", np.array(value, np.float32))

    def ints(self, layer, what, values) -> str:
        return self.const(f"{layer.name}/{what}", np.array(values, np.int64))


def _pads(p):
    """cnnc's (h, w) padding as ONNX's [top, left, bottom, right]."""
    return [p[0], p[1], p[0], p[1]]


def _channel_shape(layer):
    """Per-channel parameters broadcast over NCHW as (C, 1, 1), over (N, C) as (C,)."""
    c = layer.shape[0]
    return (c, 1, 1) if len(layer.shape) == 3 else (c,)


# ---- weighted ops --------------------------------------------------------------------------


def _with_weights(g, layer, x) -> list:
    """The node's inputs: the tensor, the weight, and the bias when the layer has one."""
    return [x, g.weight(layer, "weight")] + (
        [g.weight(layer, "bias")] if layer.args["bias"] else []
    )


@emits("conv", "dwconv")
def _conv(g, layer, xs, out):
    a = layer.args
    inputs = _with_weights(g, layer, xs[0])
    g.node(
        "Conv",
        inputs,
        out,
        layer.name,
        kernel_shape=list(a["k"]),
        strides=list(a["s"]),
        pads=_pads(a["p"]),
        dilations=list(a["d"]),
        group=a["g"],
    )


@emits("convt")
def _convt(g, layer, xs, out):
    a = layer.args
    inputs = _with_weights(g, layer, xs[0])
    g.node(
        "ConvTranspose",
        inputs,
        out,
        layer.name,
        kernel_shape=list(a["k"]),
        strides=list(a["s"]),
        pads=_pads(a["p"]),
        output_padding=list(a["op"]),
        dilations=list(a["d"]),
        group=a["g"],
    )


@emits("fc")
def _fc(g, layer, xs, out):
    inputs = _with_weights(g, layer, xs[0])
    g.node("Gemm", inputs, out, layer.name, transB=1)


# ---- pooling -------------------------------------------------------------------------------


@emits("maxpool")
def _maxpool(g, layer, xs, out):
    a = layer.args
    g.node(
        "MaxPool",
        xs,
        out,
        layer.name,
        kernel_shape=list(a["k"]),
        strides=list(a["s"]),
        pads=_pads(a["p"]),
        dilations=list(a["d"]),
        ceil_mode=int(a["ceil"]),
    )


@emits("avgpool")
def _avgpool(g, layer, xs, out):
    a = layer.args
    g.node(
        "AveragePool",
        xs,
        out,
        layer.name,
        kernel_shape=list(a["k"]),
        strides=list(a["s"]),
        pads=_pads(a["p"]),
        ceil_mode=int(a["ceil"]),
        count_include_pad=int(a["count_pad"]),
    )


@emits("gap")
def _gap(g, layer, xs, out):
    g.node("GlobalAveragePool", xs, out, layer.name)


@emits("gmp")
def _gmp(g, layer, xs, out):
    g.node("GlobalMaxPool", xs, out, layer.name)


def adaptive_matrix(n, m):
    """(m, n): row i averages PyTorch's adaptive window ``floor(i*n/m) <= j < ceil((i+1)*n/m)``."""
    mat = np.zeros((m, n), np.float32)
    for i in range(m):
        lo, hi = (i * n) // m, -(-((i + 1) * n) // m)
        mat[i, lo:hi] = 1.0 / (hi - lo)
    return mat


@emits("adaptive_avgpool")
def _adaptive_avgpool(g, layer, xs, out):
    """ONNX has no adaptive pool: average rows and columns as two matrix products (exact
    windows, any sizes), or one AveragePool when the windows tile the input."""
    _, h, w = layer.inputs[0].shape
    oh, ow = layer.args["size"]
    if h % oh == 0 and w % ow == 0:
        k = [h // oh, w // ow]
        g.node("AveragePool", xs, out, layer.name, kernel_shape=k, strides=k)
        return
    rows = g.const(f"{layer.name}/rows", adaptive_matrix(h, oh))
    cols = g.const(f"{layer.name}/cols", adaptive_matrix(w, ow).T.copy())
    mid = g.node("MatMul", [xs[0], cols], f"{layer.name}/cols_out", f"{layer.name}/cols")
    g.node("MatMul", [rows, mid], out, f"{layer.name}/rows")


# ---- normalisation -------------------------------------------------------------------------


@emits("bn")
def _bn(g, layer, xs, out):
    keys = ("weight", "bias", "running_mean", "running_var")
    g.node(
        "BatchNormalization",
        [xs[0], *(g.weight(layer, k) for k in keys)],
        out,
        layer.name,
        epsilon=layer.args["eps"],
    )


@emits("layernorm")
def _layernorm(g, layer, xs, out):
    """Over channels: NHWC, LayerNormalization on the last axis, back (as torch exports
    ConvNeXt's LayerNorm2d)."""
    eps = layer.args["eps"]
    ws = [g.weight(layer, "weight"), g.weight(layer, "bias")]
    if len(layer.shape) == 1:
        g.node("LayerNormalization", [xs[0], *ws], out, layer.name, axis=-1, epsilon=eps)
        return
    n = layer.name
    t = g.node("Transpose", xs, f"{n}/nhwc", f"{n}/to_nhwc", perm=[0, 2, 3, 1])
    y = g.node("LayerNormalization", [t, *ws], f"{n}/norm", n, axis=-1, epsilon=eps)
    g.node("Transpose", [y], out, f"{n}/to_nchw", perm=[0, 3, 1, 2])


@emits("groupnorm")
def _groupnorm(g, layer, xs, out):
    """Reshape to (N, groups, -1), InstanceNormalization, reshape back, per-channel affine:
    torch's own export, valid at every opset (GroupNormalization's meaning changed in 21)."""
    n, (c, h, w), groups = layer.name, layer.shape, layer.args["groups"]
    grouped = g.ints(layer, "grouped_shape", [0, groups, -1])
    t = g.node("Reshape", [xs[0], grouped], f"{n}/grouped", f"{n}/group")
    ones = g.const(f"{n}/ones", np.ones(groups, np.float32))
    zeros = g.const(f"{n}/zeros", np.zeros(groups, np.float32))
    t = g.node(
        "InstanceNormalization",
        [t, ones, zeros],
        f"{n}/normed",
        n,
        epsilon=layer.args["eps"],
    )
    back = g.ints(layer, "shape", [0, c, h, w])
    t = g.node("Reshape", [t, back], f"{n}/ungrouped", f"{n}/ungroup")
    t = g.node("Mul", [t, g.weight(layer, "weight", (c, 1, 1))], f"{n}/scaled", f"{n}/scale")
    g.node("Add", [t, g.weight(layer, "bias", (c, 1, 1))], out, f"{n}/shift")


@emits("scale")
def _scale(g, layer, xs, out):
    g.node("Mul", [xs[0], g.weight(layer, "weight")], out, layer.name)


@emits("lrn")
def _lrn(g, layer, xs, out):
    a = layer.args
    if a["size"] % 2 == 0:
        raise UsageError(
            error(
                f"layer '{layer.name}': lrn(size={a['size']}) cannot be exported: ONNX's LRN "
                "centres an even window one channel later than PyTorch's",
                hint="use an odd size",
            )
        )
    g.node(
        "LRN", xs, out, layer.name, size=a["size"], alpha=a["alpha"], beta=a["beta"], bias=a["k"]
    )


# ---- activations ---------------------------------------------------------------------------


def _simple(op_type):
    def emit(g, layer, xs, out):
        g.node(op_type, xs, out, layer.name)

    return emit


for _name, _op_type in (
    ("relu", "Relu"),
    ("sigmoid", "Sigmoid"),
    ("tanh", "Tanh"),
    ("softplus", "Softplus"),
    ("hardswish", "HardSwish"),
    ("selu", "Selu"),  # ONNX's default alpha and gamma are PyTorch's constants
    ("identity", "Identity"),
    ("dropout", "Identity"),
    ("droppath", "Identity"),
    ("flatten", "Flatten"),
):
    EMITTERS[_name] = _simple(_op_type)


@emits("relu6", "clamp")
def _clip(g, layer, xs, out):
    lo, hi = (0.0, 6.0) if layer.op == "relu6" else (layer.args["lo"], layer.args["hi"])
    bounds = [
        "" if v is None else g.scalar(layer, what, v) for v, what in ((lo, "min"), (hi, "max"))
    ]
    while bounds and bounds[-1] == "":
        bounds.pop()
    g.node("Clip", [xs[0], *bounds], out, layer.name)


@emits("leaky_relu")
def _leaky_relu(g, layer, xs, out):
    g.node("LeakyRelu", xs, out, layer.name, alpha=layer.args["a"])


@emits("elu")
def _elu(g, layer, xs, out):
    g.node("Elu", xs, out, layer.name, alpha=layer.args["a"])


@emits("hardsigmoid")
def _hardsigmoid(g, layer, xs, out):
    g.node("HardSigmoid", xs, out, layer.name, alpha=1.0 / 6.0, beta=0.5)


@emits("silu")
def _silu(g, layer, xs, out):
    s = g.node("Sigmoid", xs, f"{layer.name}/sigmoid", f"{layer.name}/Sigmoid")
    g.node("Mul", [xs[0], s], out, layer.name)


@emits("mish")
def _mish(g, layer, xs, out):
    if g.opset >= 18:
        g.node("Mish", xs, out, layer.name)
        return
    n = layer.name
    t = g.node("Softplus", xs, f"{n}/softplus", f"{n}/Softplus")
    t = g.node("Tanh", [t], f"{n}/tanh", f"{n}/Tanh")
    g.node("Mul", [xs[0], t], out, n)


@emits("gelu")
def _gelu(g, layer, xs, out):
    tanh = layer.args["approx"] == "tanh"
    if g.opset >= 20:
        g.node("Gelu", xs, out, layer.name, approximate="tanh" if tanh else "none")
        return
    n, x = layer.name, xs[0]
    if tanh:  # 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
        cube = g.node("Mul", [x, x], f"{n}/x2", f"{n}/x2")
        cube = g.node("Mul", [cube, x], f"{n}/x3", f"{n}/x3")
        t = g.node("Mul", [cube, g.scalar(layer, "c", 0.044715)], f"{n}/cx3", f"{n}/cx3")
        t = g.node("Add", [x, t], f"{n}/inner", f"{n}/inner")
        t = g.node("Mul", [t, g.scalar(layer, "k", math.sqrt(2 / math.pi))], f"{n}/kx", f"{n}/kx")
        inner = g.node("Tanh", [t], f"{n}/tanh", f"{n}/Tanh")
    else:  # torch's own decomposition: 0.5 x (1 + erf(x / sqrt 2))
        t = g.node("Div", [x, g.scalar(layer, "sqrt2", math.sqrt(2))], f"{n}/div", f"{n}/Div")
        inner = g.node("Erf", [t], f"{n}/erf", f"{n}/Erf")
    t = g.node("Add", [inner, g.scalar(layer, "one", 1.0)], f"{n}/plus1", f"{n}/Add")
    t = g.node("Mul", [x, t], f"{n}/xmul", f"{n}/Mul")
    g.node("Mul", [t, g.scalar(layer, "half", 0.5)], out, n)


@emits("prelu")
def _prelu(g, layer, xs, out):
    shape = (1,) if layer.args["shared"] else _channel_shape(layer)
    g.node("PRelu", [xs[0], g.weight(layer, "weight", shape)], out, layer.name)


@emits("softmax")
def _softmax(g, layer, xs, out):
    g.node("Softmax", xs, out, layer.name, axis=1)


# ---- merging -------------------------------------------------------------------------------


@emits("concat")
def _concat(g, layer, xs, out):
    g.node("Concat", xs, out, layer.name, axis=1)


@emits("add")
def _add(g, layer, xs, out):
    g.node("Add" if len(xs) == 2 else "Sum", xs, out, layer.name)


@emits("mul")
def _mul(g, layer, xs, out):
    t = xs[0]
    for i, x in enumerate(xs[1:], start=1):
        last = i == len(xs) - 1
        t = g.node(
            "Mul",
            [t, x],
            out if last else f"{layer.name}/{i}",
            layer.name + ("" if last else f"/{i}"),
        )


# ---- layout --------------------------------------------------------------------------------


def _slice(g, layer, x, out, starts, ends, axes):
    g.node(
        "Slice",
        [
            x,
            g.ints(layer, "starts", starts),
            g.ints(layer, "ends", ends),
            g.ints(layer, "axes", axes),
        ],
        out,
        layer.name,
    )


@emits("crop")
def _crop(g, layer, xs, out):
    (_, h, w), (_, hr, wr) = layer.inputs[0].shape, layer.shape
    oy, ox = (h - hr) // 2, (w - wr) // 2
    _slice(g, layer, xs[0], out, [oy, ox], [oy + hr, ox + wr], [2, 3])


@emits("slice")
def _channel_slice(g, layer, xs, out):
    _slice(g, layer, xs[0], out, [layer.args["start"]], [layer.args["stop"]], [1])


@emits("shuffle")
def _shuffle(g, layer, xs, out):
    """Reshape-Transpose-Reshape, the pattern torch exports for ShuffleNet's shuffle."""
    n, (c, h, w), groups = layer.name, layer.shape, layer.args["g"]
    split = g.ints(layer, "grouped_shape", [0, groups, c // groups, h, w])
    t = g.node("Reshape", [xs[0], split], f"{n}/grouped", f"{n}/group")
    t = g.node("Transpose", [t], f"{n}/transposed", f"{n}/transpose", perm=[0, 2, 1, 3, 4])
    g.node("Reshape", [t, g.ints(layer, "shape", [0, c, h, w])], out, n)


@emits("pad")
def _pad(g, layer, xs, out):
    top, bottom, left, right = layer.args["p"]
    mode = {"zeros": "constant", "reflect": "reflect", "replicate": "edge"}[layer.args["mode"]]
    pads = g.ints(layer, "pads", [0, 0, top, left, 0, 0, bottom, right])
    g.node("Pad", [xs[0], pads], out, layer.name, mode=mode)


def _resize(g, layer, x, out, mode):
    """Resize to the layer's H and W with torch's interpolate conventions."""
    n, (c, h, w) = layer.name, layer.shape
    shape = g.node("Shape", [x], f"{n}/in_shape", f"{n}/shape")
    batch = g.node(
        "Slice",
        [shape, g.ints(layer, "zero", [0]), g.ints(layer, "one", [1])],
        f"{n}/batch",
        f"{n}/batch",
    )
    sizes = g.node(
        "Concat", [batch, g.ints(layer, "chw", [c, h, w])], f"{n}/sizes", f"{n}/sizes", axis=0
    )
    if mode == "nearest":
        attrs = {"coordinate_transformation_mode": "asymmetric", "nearest_mode": "floor"}
    else:
        # torch's align_corners=False at every size (pytorch_half_pixel differs at size 1)
        attrs = {"coordinate_transformation_mode": "half_pixel"}
    g.node(
        "Resize",
        [x, "", "", sizes],
        out,
        n,
        mode="nearest" if mode == "nearest" else "linear",
        **attrs,
    )


@emits("upsample", "resize")
def _resample(g, layer, xs, out):
    _resize(g, layer, xs[0], out, layer.args["mode"])


# ---- the model -----------------------------------------------------------------------------


def _tensor_type(h, shape):
    from onnx import TensorProto

    return h.make_tensor_type_proto(TensorProto.FLOAT, ["N", *shape])


def build_model(network, weights: dict, opset: int = DEFAULT_OPSET):
    """The ONNX model of a checked network with these weights (``LAYER.weight`` -> array)."""
    onnx = require_onnx()
    if opset not in OPSETS:
        raise UsageError(
            error(
                f"cannot export to opset {opset}",
                hint=f"choose an opset from {OPSETS.start} to {OPSETS.stop - 1}",
            )
        )
    from ..runtime.weights import check_variances

    check_variances(network, weights, "weights: ")
    size = sum(np.asarray(v).nbytes for v in weights.values())
    if size > MAX_WEIGHT_BYTES:
        raise ResourceError(
            error(
                f"{network.name}'s weights take {size / 2**30:.1f} GiB; an ONNX file holds at "
                "most 2 GiB (protobuf's limit) and cnnc does not write external data files",
                hint="export a smaller variant of the network",
            )
        )
    h = onnx.helper
    g = Graph(onnx, weights, opset)
    names = {id(layer): name for name, layer in network.inputs.items()}
    outputs = {id(layer): name for name, layer in network.outputs.items()}
    for layer in network.layers:
        out = outputs.get(id(layer), layer.name)
        xs = [names[id(i)] for i in layer.inputs]
        EMITTERS[layer.op](g, layer, xs, out)
        names[id(layer)] = out
    graph_outputs = []
    for name, layer in network.outputs.items():
        if names[id(layer)] != name:  # an output that is an input or another output
            g.node("Identity", [names[id(layer)]], name, f"{name}/output")
        graph_outputs.append(h.make_value_info(name, _tensor_type(h, layer.shape)))
    graph = h.make_graph(
        g.nodes,
        network.name,
        [
            h.make_value_info(name, _tensor_type(h, layer.shape))
            for name, layer in network.inputs.items()
        ],
        graph_outputs,
        g.initializers,
    )
    model = h.make_model(
        graph,
        opset_imports=[h.make_opsetid("", opset)],
        producer_name="cnnc",
        doc_string=f"{network.name} from {network.file}",
    )
    model.ir_version = min(model.ir_version, 10)  # what ONNX Runtime reads today
    onnx.checker.check_model(model, full_check=True)
    return model


def export(network, path, weights=None, seed: int = 0, opset: int = DEFAULT_OPSET):
    """Write ``network`` as an ONNX model to ``path`` (written atomically, after the checker
    passed). ``weights`` is a dict or an ``.npz`` path; without it the weights are seeded."""
    from pathlib import Path

    from ..compiler import write_atomically
    from ..runtime import weights as weight_io

    path = Path(path)
    if path.suffix != ".onnx":
        raise UsageError(error(f"the output must be an .onnx file, got '{path}'"))
    if weights is None:
        values = weight_io.initialise(network, seed)
    elif isinstance(weights, dict):
        values = weights
    else:
        values = weight_io.load(network, weights)
    model = build_model(network, values, opset)
    write_atomically(path, model.SerializeToString())
    return model
