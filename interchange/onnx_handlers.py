"""The importer's translations, one handler per ONNX op type (:data:`HANDLERS`, keyed like
the kernel tables): each turns one ONNX node whose inputs are tensors (:class:`View`) and
constants (arrays) into cnnc layers, or raises :class:`Unsupported` saying what has no
``.cnn`` equivalent. Nodes of constants only are folded (:func:`fold`).
"""

from __future__ import annotations

import math

import numpy as np

from .onnx_export import adaptive_matrix
from .onnx_graph import Node, View


class Unavailable:
    """An ONNX output cnnc does not compute (Dropout's mask, MaxPool's indices): an error
    only for a node that uses it."""

    def __init__(self, reason: str):
        self.reason = reason


class Unsupported(Exception):
    """This node has no ``.cnn`` equivalent; ``reason`` says what exactly."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


#: ONNX op type -> handler(ctx, node, ins, attrs) -> list of outputs (View or ndarray)
HANDLERS: dict = {}


def handles(*op_types):
    def wrap(fn):
        for t in op_types:
            HANDLERS[t] = fn
        return fn

    return wrap


# ---- the translation context ----------------------------------------------------------------


class Context:
    def __init__(self, onnx, opset: int):
        self.onnx, self.opset = onnx, opset
        self.nodes: list[Node] = []
        self.current = None  # the ONNX node being translated

    def add(self, op, inputs, args=None, shape=None, weights=None, kind="plain", groups=0):
        """A new cnnc layer on ``inputs`` (Views, plain or all of one layout)."""
        nodes = [v.node for v in inputs]
        if shape is None:
            shape = nodes[0].shape
        c = self.current
        node = Node(
            op,
            nodes,
            dict(args or {}),
            tuple(int(d) for d in shape),
            (
                c.op_type,
                c.name,
                c.output[0] if c.output else "",
                c.input[1] if weights and len(c.input) > 1 else "",
            ),
            dict(weights or {}),
        )
        self.nodes.append(node)
        return View(node, kind, groups)


def attrs_of(onnx, node) -> dict:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _const(x, what: str) -> np.ndarray:
    if not isinstance(x, np.ndarray):
        raise Unsupported(f"{what} must be a constant")
    return x


def _tensor(x, what="input") -> View:
    if not isinstance(x, View):
        raise Unsupported(f"{what} must be a tensor")
    return x


def _plain(x, what="input") -> View:
    v = _tensor(x, what)
    if v.kind != "plain":
        raise Unsupported(f"{what} has an ONNX layout ({v.kind}) with no cnnc equivalent")
    return v


def _feature_map(x) -> View:
    v = _plain(x)
    if len(v.shape) != 3:
        raise Unsupported(f"needs an NCHW tensor, got per-sample shape {v.shape}")
    return v


#: The least value of each window attribute (a zero stride would divide by zero).
LEAST = {"strides": 1, "dilations": 1, "kernel_shape": 1, "output_padding": 0}


def _pair(values, what):
    values = [int(v) for v in values]
    if len(values) != 2:
        raise Unsupported(f"{what} must be 2-D, got {values}")
    if what in LEAST and min(values) < LEAST[what]:
        raise Unsupported(f"{what} must be at least {LEAST[what]}, got {values}")
    return tuple(values)


def _group(attrs) -> int:
    g = int(attrs.get("group", 1))
    if g < 1:
        raise Unsupported(f"group must be at least 1, got {g}")
    return g


def _arg_pair(p):
    return p[0] if p[0] == p[1] else tuple(p)


def _same_pads(auto_pad, size, k, s, d):
    """Begin and end padding of auto_pad SAME_UPPER/SAME_LOWER along one axis."""
    out = -(-size // s)
    total = max((out - 1) * s + (k - 1) * d + 1 - size, 0)
    small, large = total // 2, total - total // 2
    return (small, large) if auto_pad == "SAME_UPPER" else (large, small)


def _window_pads(attrs, hw, k, s, d):
    """(top, left, bottom, right) from pads or auto_pad."""
    auto = attrs.get("auto_pad", b"NOTSET")
    auto = auto.decode() if isinstance(auto, bytes) else auto
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        (t, b), (left, r) = (_same_pads(auto, n, kk, ss, dd) for n, kk, ss, dd in zip(hw, k, s, d))
        return (t, left, b, r)
    if auto == "VALID":
        return (0, 0, 0, 0)
    pads = [int(p) for p in attrs.get("pads", [0, 0, 0, 0])]
    if len(pads) != 4:
        raise Unsupported(f"pads must be 2-D, got {pads}")
    if min(pads) < 0:
        raise Unsupported(f"negative pads {pads}")
    return tuple(pads)


def _pad_layer(ctx, x, pads, mode="zeros"):
    """A ``pad`` layer for ONNX pads (top, left, bottom, right)."""
    t, left, b, r = pads
    c, h, w = x.shape
    return ctx.add("pad", [x], {"p": (t, b, left, r), "mode": mode}, (c, h + t + b, w + left + r))


def _symmetric_or_pad(ctx, x, pads, mode="zeros"):
    """(input, (ph, pw)): symmetric pads stay in the op; others become a ``pad`` layer."""
    t, left, b, r = pads
    if t == b and left == r:
        return x, (t, left)
    return _pad_layer(ctx, x, pads, mode), (0, 0)


# ---- weighted ops ---------------------------------------------------------------------------


def _conv_out(n, k, s, p, d):
    return (n + 2 * p - d * (k - 1) - 1) // s + 1


@handles("Conv")
def _conv(ctx, node, ins, attrs):
    x = _feature_map(ins[0])
    w = _const(ins[1], "Conv's weight")
    bias = _const(ins[2], "Conv's bias") if len(ins) > 2 and ins[2] is not None else None
    if w.ndim != 4:
        raise Unsupported(f"only 2-D convolutions, got a weight of rank {w.ndim}")
    out, _, kh, kw = w.shape
    k = (kh, kw)
    s = _pair(attrs.get("strides", [1, 1]), "strides")
    d = _pair(attrs.get("dilations", [1, 1]), "dilations")
    g = _group(attrs)
    x, p = _symmetric_or_pad(ctx, x, _window_pads(attrs, x.shape[1:], k, s, d))
    c, h, wd = x.shape
    shape = (out, *(_conv_out(n, kk, ss, pp, dd) for n, kk, ss, pp, dd in zip((h, wd), k, s, p, d)))
    weights = {"weight": w}
    if bias is not None:
        weights["bias"] = bias
    args = {"k": _arg_pair(k), "s": _arg_pair(s), "p": _arg_pair(p), "d": _arg_pair(d)}
    args = {key: v for key, v in args.items() if v != (1 if key in "sd" else 0)}
    args["k"] = _arg_pair(k)
    if bias is None:
        args["bias"] = False
    if g == c and g > 1 and out % c == 0:
        if out > c:
            args["m"] = out // c
        return [ctx.add("dwconv", [x], args, shape, weights)]
    if g != 1:
        args["g"] = g
    return [ctx.add("conv", [x], {"out": out, **args}, shape, weights)]


@handles("ConvTranspose")
def _convt(ctx, node, ins, attrs):
    x = _feature_map(ins[0])
    w = _const(ins[1], "ConvTranspose's weight")
    bias = _const(ins[2], "ConvTranspose's bias") if len(ins) > 2 and ins[2] is not None else None
    if w.ndim != 4:
        raise Unsupported(f"only 2-D transposed convolutions, got a weight of rank {w.ndim}")
    g = _group(attrs)
    c, h, wd = x.shape
    out, k = w.shape[1] * g, w.shape[2:]
    s = _pair(attrs.get("strides", [1, 1]), "strides")
    d = _pair(attrs.get("dilations", [1, 1]), "dilations")
    op = _pair(attrs.get("output_padding", [0, 0]), "output_padding")
    if "output_shape" in attrs or attrs.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
        raise Unsupported("output_shape / auto_pad (give explicit pads)")
    t, left, b, r = (int(v) for v in attrs.get("pads", [0, 0, 0, 0]))
    if t != b or left != r:
        raise Unsupported(f"asymmetric pads {[t, left, b, r]}")
    p = (t, left)
    shape = (
        out,
        *(
            (n - 1) * ss - 2 * pp + dd * (kk - 1) + oo + 1
            for n, kk, ss, pp, dd, oo in zip((h, wd), k, s, p, d, op)
        ),
    )
    weights = {"weight": w}
    args = {"out": out, "k": _arg_pair(k)}
    for key, v, default in (("s", s, 1), ("p", p, 0), ("op", op, 0), ("d", d, 1), ("g", g, 1)):
        v = v if isinstance(v, int) else _arg_pair(v)
        if v != default:
            args[key] = v
    if bias is None:
        args["bias"] = False
    else:
        weights["bias"] = bias
    return [ctx.add("convt", [x], args, shape, weights)]


def _vector(x, what) -> View:
    v = _plain(x, what)
    if len(v.shape) != 1:
        raise Unsupported(f"{what} must be a vector (after Flatten), got per-sample {v.shape}")
    return v


def _fc(ctx, x, weight, bias):
    out = weight.shape[0]
    weights = {"weight": weight}
    args = {"out": out}
    if bias is None:
        args["bias"] = False
    else:
        weights["bias"] = np.broadcast_to(bias, (out,)).copy()
    return ctx.add("fc", [x], args, (out,), weights)


@handles("Gemm")
def _gemm(ctx, node, ins, attrs):
    x = _vector(ins[0], "Gemm's A")
    if attrs.get("transA", 0):
        raise Unsupported("transA=1")
    b = _const(ins[1], "Gemm's B").astype(np.float32, copy=False)
    b = b if attrs.get("transB", 0) else b.T
    if attrs.get("alpha", 1.0) != 1.0:
        b = b * np.float32(attrs["alpha"])
    c = ins[2] if len(ins) > 2 else None
    if c is not None:
        c = _const(c, "Gemm's C")
        if c.size not in (1, b.shape[0]) or (c.ndim == 2 and c.shape[0] != 1):
            raise Unsupported(f"a bias C of shape {c.shape} (cnnc's fc has one per output)")
        c = c.reshape(-1) * np.float32(attrs.get("beta", 1.0))
    return [_fc(ctx, x, np.ascontiguousarray(b), c)]


@handles("MatMul")
def _matmul(ctx, node, ins, attrs):
    if isinstance(ins[0], np.ndarray) and isinstance(ins[1], View):
        return [_adaptive_rows(ctx, ins[0], ins[1])]
    x = _tensor(ins[0])
    w = _const(ins[1], "MatMul's second operand")
    if w.ndim != 2:
        raise Unsupported("MatMul with a weight of rank other than 2")
    if x.kind == "nhwc":  # a Linear over channels in NHWC: a 1x1 convolution
        cin, out = w.shape
        weight = np.ascontiguousarray(w.T).reshape(out, cin, 1, 1)
        _, h, wd = x.node.shape
        return [
            ctx.add(
                "conv",
                [x],
                {"out": out, "k": 1, "bias": False},
                (out, h, wd),
                {"weight": weight},
                kind="nhwc",
            )
        ]
    if x.kind == "plain" and len(x.shape) == 3:  # the columns of an adaptive average pool
        c, h, wd = x.shape
        if w.shape[0] == wd and np.allclose(w, adaptive_matrix(wd, w.shape[1]).T, atol=1e-6):
            return [ctx.add("$adaptive_cols", [x], {"ow": w.shape[1]}, (c, h, w.shape[1]))]
        raise Unsupported("a MatMul on a feature map")
    return [_fc(ctx, _vector(x, "MatMul's first operand"), np.ascontiguousarray(w.T), None)]


def _adaptive_rows(ctx, rows, x):
    """``rows @ (x @ cols)``: cnnc's export of adaptive_avgpool whose windows overlap."""
    node = x.node
    if node.op != "$adaptive_cols" or rows.ndim != 2:
        raise Unsupported("a MatMul of a constant by a tensor")
    source = View(node.inputs[0])
    c, h, _ = source.shape
    if rows.shape[1] != h or not np.allclose(rows, adaptive_matrix(h, rows.shape[0]), atol=1e-6):
        raise Unsupported("a MatMul of a constant by a tensor")
    size = (rows.shape[0], node.args["ow"])
    return ctx.add("adaptive_avgpool", [source], {"size": _arg_pair(size)}, (c, *size))


# ---- normalisation --------------------------------------------------------------------------


@handles("BatchNormalization")
def _bn(ctx, node, ins, attrs):
    x = _plain(ins[0])
    extra = [Unavailable("BatchNormalization's training outputs")] * (len(node.output) - 1)
    scale, bias, mean, var = (_const(i, "BatchNormalization's parameters") for i in ins[1:5])
    weights = {"weight": scale, "bias": bias, "running_mean": mean, "running_var": var}
    return [ctx.add("bn", [x], {"eps": float(attrs.get("epsilon", 1e-5))}, None, weights), *extra]


@handles("InstanceNormalization")
def _instance_norm(ctx, node, ins, attrs):
    x = _tensor(ins[0])
    scale, bias = (_const(i, "InstanceNormalization's parameters") for i in ins[1:3])
    eps = float(attrs.get("epsilon", 1e-5))
    if x.kind == "gn_grouped":  # group norm as torch exports it
        if not (np.all(scale == 1) and np.all(bias == 0)):
            raise Unsupported("a grouped InstanceNormalization with its own scale or bias")
        c = x.node.shape[0]
        w = {"weight": np.ones(c, np.float32), "bias": np.zeros(c, np.float32)}
        return [
            ctx.add(
                "groupnorm", [x], {"groups": x.groups, "eps": eps}, None, w, "gn_grouped", x.groups
            )
        ]
    x = _feature_map(x)
    c = x.shape[0]
    w = {"weight": scale, "bias": bias}
    return [ctx.add("groupnorm", [x], {"groups": c, "eps": eps}, None, w)]


@handles("LayerNormalization")
def _layernorm(ctx, node, ins, attrs):
    x = _tensor(ins[0])
    if attrs.get("axis", -1) not in (-1, len(x.shape)):
        raise Unsupported("normalising over more than the last axis")
    if x.kind not in ("nhwc", "plain") or (x.kind == "plain" and len(x.shape) != 1):
        raise Unsupported("normalising over an axis other than the channels")
    c = x.shape[-1]
    scale = _const(ins[1], "LayerNormalization's scale")
    bias = (
        _const(ins[2], "LayerNormalization's bias") if len(ins) > 2 and ins[2] is not None else None
    )
    w = {
        "weight": np.broadcast_to(scale, (c,)).copy(),
        "bias": np.zeros(c, np.float32) if bias is None else np.broadcast_to(bias, (c,)).copy(),
    }
    eps = float(attrs.get("epsilon", 1e-5))
    return [ctx.add("layernorm", [x], {"eps": eps}, None, w, x.kind)]


@handles("LRN")
def _lrn(ctx, node, ins, attrs):
    x = _feature_map(ins[0])
    size = int(attrs["size"])
    if size % 2 == 0:
        raise Unsupported(f"even size {size} (its window is centred unlike PyTorch's)")
    args = {
        "size": size,
        "alpha": float(attrs.get("alpha", 1e-4)),
        "beta": float(attrs.get("beta", 0.75)),
        "k": float(attrs.get("bias", 1.0)),
    }
    return [ctx.add("lrn", [x], args)]


# ---- activations ----------------------------------------------------------------------------


def _pointwise(op, args_of=None):
    def handler(ctx, node, ins, attrs):
        x = _tensor(ins[0])
        if x.kind not in ("plain", "nhwc"):
            raise Unsupported(f"a layout ({x.kind}) with no cnnc equivalent")
        args = args_of(attrs) if args_of else {}
        return [ctx.add(op, [x], args, kind=x.kind)]

    return handler


for _t, _op in (
    ("Relu", "relu"),
    ("Sigmoid", "sigmoid"),
    ("Tanh", "tanh"),
    ("Softplus", "softplus"),
    ("HardSwish", "hardswish"),
    ("Mish", "mish"),
    ("Erf", "$erf"),
):
    HANDLERS[_t] = _pointwise(_op)
HANDLERS["LeakyRelu"] = _pointwise("leaky_relu", lambda a: {"a": float(a.get("alpha", 0.01))})
HANDLERS["Elu"] = _pointwise("elu", lambda a: {"a": float(a.get("alpha", 1.0))})
HANDLERS["Gelu"] = _pointwise(
    "gelu",
    lambda a: {"approx": "tanh"} if a.get("approximate", b"none") in (b"tanh", "tanh") else {},
)


@handles("Selu")
def _selu(ctx, node, ins, attrs):
    alpha, gamma = attrs.get("alpha", 1.67326319217681884765625), attrs.get("gamma", 1.0507010221)
    if not (
        math.isclose(alpha, 1.6732632, rel_tol=1e-6)
        and math.isclose(gamma, 1.0507010, rel_tol=1e-6)
    ):
        raise Unsupported(f"alpha={alpha:g}, gamma={gamma:g} (cnnc's selu has PyTorch's constants)")
    return _pointwise("selu")(ctx, node, ins, attrs)


@handles("HardSigmoid")
def _hardsigmoid(ctx, node, ins, attrs):
    alpha, beta = attrs.get("alpha", 0.2), attrs.get("beta", 0.5)
    if not (math.isclose(alpha, 1 / 6, rel_tol=1e-5) and math.isclose(beta, 0.5)):
        raise Unsupported(f"alpha={alpha:g}, beta={beta:g} (cnnc's hardsigmoid is 1/6, 0.5)")
    return _pointwise("hardsigmoid")(ctx, node, ins, attrs)


@handles("Clip")
def _clip(ctx, node, ins, attrs):
    x = _tensor(ins[0])
    if ctx.opset < 11:
        lo, hi = attrs.get("min"), attrs.get("max")
    else:
        bound = [None if i is None else float(_const(i, "Clip's bounds")) for i in ins[1:3]]
        lo, hi = (bound + [None, None])[:2]
    if lo == 0 and hi == 6:
        return [ctx.add("relu6", [x], kind=x.kind)]
    if lo == 0 and hi is None:
        return [ctx.add("relu", [x], kind=x.kind)]
    if lo is None and hi is None:
        return [x]
    args = {k: float(v) for k, v in (("lo", lo), ("hi", hi)) if v is not None}
    return [ctx.add("clamp", [x], args, kind=x.kind)]


@handles("PRelu")
def _prelu(ctx, node, ins, attrs):
    x = _plain(ins[0])
    slope = _const(ins[1], "PRelu's slope")
    c = x.shape[0]
    if slope.size == 1:
        return [
            ctx.add(
                "prelu",
                [x],
                {"shared": True} if c > 1 else {},
                None,
                {"weight": slope.reshape(1) if c > 1 else slope.reshape(c)},
            )
        ]
    if (
        slope.size != c
        or slope.reshape(-1).shape[0] != c
        or slope.shape[-len(x.shape) :][1:] not in ((1, 1), (), (1,))
    ):
        raise Unsupported(f"a slope of shape {slope.shape} (cnnc's is per channel)")
    return [ctx.add("prelu", [x], {}, None, {"weight": slope.reshape(c)})]


@handles("Softmax")
def _softmax(ctx, node, ins, attrs):
    x = _plain(ins[0])
    rank = len(x.shape) + 1
    axis = int(attrs.get("axis", 1 if ctx.opset < 13 else -1)) % rank
    if ctx.opset < 13:  # coerced to 2-D at `axis`: over the channels only if nothing follows
        if axis != 1 or math.prod(x.shape[1:]) != 1:
            raise Unsupported("softmax over flattened C, H, W (opset < 13)")
    elif axis != 1:
        raise Unsupported(f"softmax over axis {axis} (cnnc's is over the channels)")
    return [ctx.add("softmax", [x])]


# ---- pooling --------------------------------------------------------------------------------


def _pool(ctx, node, ins, attrs, op):
    x = _feature_map(ins[0])
    k = _pair(attrs["kernel_shape"], "kernel_shape")
    s = _pair(attrs.get("strides", [1, 1]), "strides")
    d = _pair(attrs.get("dilations", [1, 1]), "dilations")
    if op == "avgpool" and d != (1, 1):
        raise Unsupported("dilated average pooling")
    if attrs.get("storage_order", 0):
        raise Unsupported("storage_order=1")
    ceil = bool(attrs.get("ceil_mode", 0))
    count_pad = bool(attrs.get("count_include_pad", 0))
    pads = _window_pads(attrs, x.shape[1:], k, s, d)
    t, left, b, r = pads
    c, h, w = x.shape
    whole = all(
        n + p0 + p1 - kk < ss and kk >= n
        for n, kk, ss, p0, p1 in zip((h, w), k, s, (t, left), (b, r))
    )
    if op == "avgpool" and not count_pad and whole and t <= 0 and left <= 0:
        return [ctx.add("gap", [x], {}, (c, 1, 1))]  # one window over the whole input
    symmetric = t == b and left == r and t <= k[0] // 2 and left <= k[1] // 2
    if not symmetric:
        if ceil:
            raise Unsupported("ceil_mode with asymmetric padding")
        if op == "avgpool" and not count_pad and any(pads):
            raise Unsupported("asymmetric padding with count_include_pad=0")
        if max(t, b) >= k[0] or max(left, r) >= k[1]:
            raise Unsupported(f"padding {list(pads)} as large as the window")
        # max pooling never picks a replicated edge over the edge itself
        x = _pad_layer(ctx, x, pads, "replicate" if op == "maxpool" else "zeros")
        pads = (0, 0, 0, 0)
    c, h, w = x.shape
    p = (pads[0], pads[1])
    sizes = []
    for n, kk, ss, pp, dd in zip((h, w), k, s, p, d):
        span = n + 2 * pp - dd * (kk - 1) - 1
        o = (-(-span // ss) if ceil else span // ss) + 1
        if ceil and (o - 1) * ss >= n + pp:
            o -= 1
        sizes.append(o)
    args = {"k": _arg_pair(k)}
    if s != k:
        args["s"] = _arg_pair(s)
    if p != (0, 0):
        args["p"] = _arg_pair(p)
    if d != (1, 1):
        args["d"] = _arg_pair(d)
    if ceil:
        args["ceil"] = True
    if op == "avgpool" and not count_pad and p != (0, 0):
        args["count_pad"] = False
    return [ctx.add(op, [x], args, (c, *sizes)), Unavailable("MaxPool's indices")]


HANDLERS["MaxPool"] = lambda ctx, node, ins, attrs: _pool(ctx, node, ins, attrs, "maxpool")
HANDLERS["AveragePool"] = lambda ctx, node, ins, attrs: _pool(ctx, node, ins, attrs, "avgpool")


@handles("GlobalAveragePool", "GlobalMaxPool")
def _global_pool(ctx, node, ins, attrs):
    x = _feature_map(ins[0])
    op = "gap" if node.op_type == "GlobalAveragePool" else "gmp"
    return [ctx.add(op, [x], {}, (x.shape[0], 1, 1))]


@handles("ReduceMean")
def _reduce_mean(ctx, node, ins, attrs):
    x = _feature_map(ins[0])
    if ctx.opset >= 18:
        axes = (
            _const(ins[1], "ReduceMean's axes").tolist()
            if len(ins) > 1 and ins[1] is not None
            else None
        )
    else:
        axes = attrs.get("axes")
    if axes is None or sorted(a % 4 for a in axes) != [2, 3]:
        raise Unsupported(f"a mean over axes {axes} (cnnc's gap is over H and W)")
    y = ctx.add("gap", [x], {}, (x.shape[0], 1, 1))
    if attrs.get("keepdims", 1):
        return [y]
    return [ctx.add("flatten", [y], {}, (x.shape[0],))]


# ---- layout ---------------------------------------------------------------------------------


@handles("Flatten")
def _flatten(ctx, node, ins, attrs):
    x = _plain(ins[0])
    if int(attrs.get("axis", 1)) != 1:
        raise Unsupported("flattening at an axis other than 1")
    if len(x.shape) == 1:
        return [x]
    return [ctx.add("flatten", [x], {}, (math.prod(x.shape),))]


def _reshaped(shape, target, allowzero=False):
    """The per-sample shape after Reshape (batch 1), or None if it mixes in the batch."""
    full = [1, *shape]
    target = [int(t) for t in target]
    dims = [
        full[i] if t == 0 and not allowzero and i < len(full) else t for i, t in enumerate(target)
    ]
    if dims.count(-1) > 1:
        return None
    if -1 in dims:
        known = math.prod(d for d in dims if d != -1)
        if known == 0 or math.prod(full) % known:
            return None
        dims[dims.index(-1)] = math.prod(full) // known
    if math.prod(dims) != math.prod(full) or not dims or dims[0] != 1:
        return None
    return tuple(dims[1:])


@handles("Reshape")
def _reshape(ctx, node, ins, attrs):
    x = _tensor(ins[0])
    target = _reshaped(x.shape, _const(ins[1], "Reshape's shape"), attrs.get("allowzero", 0))
    if target is None:
        raise Unsupported("a reshape that mixes the batch with the features")
    return [_reshape_view(ctx, x, target)]


def _reshape_view(ctx, x, target):
    if target == x.shape:
        return x
    base = x.node.shape
    if x.kind == "plain" and len(base) == 3 and len(target) == 1:
        return ctx.add("flatten", [x], {}, target)
    if x.kind == "plain" and len(base) == 3 and len(target) == 4 and target[2:] == base[1:]:
        g = target[0]
        if g * target[1] == base[0]:
            return View(x.node, "grouped", g)
    if x.kind == "plain" and len(base) == 3 and len(target) == 2 and base[0] % target[0] == 0:
        return View(x.node, "gn_grouped", target[0])
    if x.kind == "grouped_t" and target == base:
        return ctx.add("shuffle", [View(x.node)], {"g": x.groups})
    if x.kind == "gn_grouped" and target == base:
        return View(x.node)
    if x.kind == "plain" and len(base) == 3 and base[1:] == (1, 1) and target == (base[0],):
        return ctx.add("flatten", [x], {}, target)
    raise Unsupported(f"a reshape from {x.shape} to {target}")


@handles("Squeeze")
def _squeeze(ctx, node, ins, attrs):
    x = _plain(ins[0])
    axes = (
        attrs.get("axes")
        if ctx.opset < 13
        else (
            _const(ins[1], "Squeeze's axes").tolist()
            if len(ins) > 1 and ins[1] is not None
            else None
        )
    )
    if (
        len(x.shape) == 3
        and x.shape[1:] == (1, 1)
        and (axes is None or sorted(a % 4 for a in axes) == [2, 3])
    ):
        return [ctx.add("flatten", [x], {}, (x.shape[0],))]
    raise Unsupported(f"squeezing axes {axes} of {x.shape}")


@handles("Transpose")
def _transpose(ctx, node, ins, attrs):
    x = _tensor(ins[0])
    perm = list(attrs.get("perm", []))
    if x.kind == "plain" and len(x.shape) == 3 and perm == [0, 2, 3, 1]:
        return [View(x.node, "nhwc")]
    if x.kind == "nhwc" and perm == [0, 3, 1, 2]:
        return [View(x.node)]
    if x.kind == "grouped" and perm == [0, 2, 1, 3, 4]:
        return [View(x.node, "grouped_t", x.groups)]
    raise Unsupported(f"a transpose {perm} of per-sample {x.shape}")


@handles("Concat")
def _concat(ctx, node, ins, attrs):
    xs = [_plain(i) for i in ins if not (isinstance(i, np.ndarray) and i.size == 0)]
    if int(attrs["axis"]) % (len(xs[0].shape) + 1) != 1:
        raise Unsupported("concatenation along an axis other than the channels")
    shape = (sum(x.shape[0] for x in xs), *xs[0].shape[1:])
    return [ctx.add("concat", xs, {}, shape)]


def _channel_slice(ctx, x, start, stop):
    c = x.shape[0]
    start, stop = max(0, min(start, c)), max(0, min(stop, c))
    if start == 0 and stop == c:
        return x
    return ctx.add("slice", [x], {"start": start, "stop": stop}, (stop - start, *x.shape[1:]))


@handles("Slice")
def _slice(ctx, node, ins, attrs):
    x = _plain(ins[0])
    if ctx.opset < 10:
        starts, ends = attrs["starts"], attrs["ends"]
        axes, steps = attrs.get("axes", list(range(len(starts)))), [1] * len(starts)
    else:
        starts, ends = (_const(i, "Slice's bounds").tolist() for i in ins[1:3])
        axes = (
            _const(ins[3], "Slice's axes").tolist()
            if len(ins) > 3 and ins[3] is not None
            else list(range(len(starts)))
        )
        steps = (
            _const(ins[4], "Slice's steps").tolist()
            if len(ins) > 4 and ins[4] is not None
            else [1] * len(starts)
        )
    rank = len(x.shape) + 1
    if sorted(a % rank for a in axes) == [2, 3] and steps == [1, 1] and len(x.shape) == 3:
        return [_crop(ctx, x, dict(zip([a % rank for a in axes], zip(starts, ends))))]
    if [a % rank for a in axes] != [1] or steps != [1]:
        raise Unsupported(f"slicing axes {axes} (cnnc's slice is over the channels)")
    c = x.shape[0]
    start = starts[0] + c if starts[0] < 0 else starts[0]
    stop = ends[0] + c if ends[0] < 0 else ends[0]
    return [_channel_slice(ctx, x, start, stop)]


def _crop(ctx, x, bounds):
    """A centred spatial slice is ``crop(x, ref)`` with any earlier tensor of the target H
    and W as the reference (crop reads only its size)."""
    c, h, w = x.shape
    (y0, y1), (x0, x1) = ((max(0, min(b, n)) for b in bounds[a]) for a, n in ((2, h), (3, w)))
    hr, wr = y1 - y0, x1 - x0
    if (y0, x0) != ((h - hr) // 2, (w - wr) // 2) or hr < 1 or wr < 1:
        raise Unsupported("a spatial slice that is not a centred crop")
    if (hr, wr) == (h, w):
        return x
    for node in reversed(ctx.nodes):
        if len(node.shape) == 3 and node.shape[1:] == (hr, wr) and not node.pseudo:
            return ctx.add("crop", [x, View(node)], {}, (c, hr, wr))
    raise Unsupported("a centred crop with no tensor of the cropped size to refer to")


@handles("Split")
def _split(ctx, node, ins, attrs):
    x = _plain(ins[0])
    if int(attrs.get("axis", 0)) % (len(x.shape) + 1) != 1:
        raise Unsupported("splitting along an axis other than the channels")
    if ctx.opset < 13:
        sizes = attrs.get("split")
    else:
        sizes = (
            _const(ins[1], "Split's sizes").tolist()
            if len(ins) > 1 and ins[1] is not None
            else None
        )
    c, n = x.shape[0], len(node.output)
    if sizes is None:
        step = -(-c // n)
        sizes = [min(step, c - i * step) for i in range(n)]
    outs, start = [], 0
    for size in sizes:
        outs.append(_channel_slice(ctx, x, start, start + int(size)))
        start += int(size)
    return outs


@handles("Pad")
def _pad(ctx, node, ins, attrs):
    x = _feature_map(ins[0])
    mode = attrs.get("mode", b"constant")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    if ctx.opset < 11:
        pads, value = attrs["pads"], attrs.get("value", 0.0)
    else:
        pads = _const(ins[1], "Pad's pads").tolist()
        value = float(_const(ins[2], "Pad's value")) if len(ins) > 2 and ins[2] is not None else 0.0
        if len(ins) > 3 and ins[3] is not None:
            axes = [a % 4 for a in _const(ins[3], "Pad's axes").tolist()]
            full = [0] * 8
            for i, a in enumerate(axes):
                full[a], full[a + 4] = pads[i], pads[i + len(axes)]
            pads = full
    if len(pads) != 8 or any(pads[i] for i in (0, 1, 4, 5)) or min(pads) < 0:
        raise Unsupported(f"pads {pads} (cnnc pads H and W only, never crops)")
    if mode == "constant" and value != 0:
        raise Unsupported(f"padding with the constant {value:g}")
    cnnc_mode = {"constant": "zeros", "reflect": "reflect", "edge": "replicate"}.get(mode)
    if cnnc_mode is None:
        raise Unsupported(f"mode {mode}")
    t, left, b, r = pads[2], pads[3], pads[6], pads[7]
    c, h, w = x.shape
    return [
        ctx.add("pad", [x], {"p": (t, b, left, r), "mode": cnnc_mode}, (c, h + t + b, w + left + r))
    ]


def _word(attrs, key, default):
    v = attrs.get(key, default)
    return v.decode() if isinstance(v, bytes) else v


@handles("Resize", "Upsample")
def _resize(ctx, node, ins, attrs):
    x = _feature_map(ins[0])
    c, h, w = x.shape
    mode = _word(attrs, "mode", "nearest")
    sizes = scales = None
    if node.op_type == "Upsample" or ctx.opset == 10:
        scales = attrs.get("scales") if ctx.opset < 9 else _const(ins[1], "the scales").tolist()
        transform = "asymmetric"
        nearest = "floor"
    else:
        transform = _word(attrs, "coordinate_transformation_mode", "half_pixel")
        nearest = _word(attrs, "nearest_mode", "round_prefer_floor")
        if len(ins) > 3 and ins[3] is not None and np.asarray(ins[3]).size:
            sizes = _const(ins[3], "Resize's sizes").tolist()
        else:
            scales = _const(ins[2], "Resize's scales").tolist()
        if attrs.get("axes") is not None or attrs.get("antialias", 0):
            raise Unsupported("axes or antialias")
    if sizes is not None:
        if len(sizes) != 4:
            raise Unsupported(f"sizes {sizes}: give 4 (N, C, H, W)")
        if [int(v) for v in sizes[1:2]] != [c]:
            raise Unsupported("resizing the channels")
        oh, ow = int(sizes[2]), int(sizes[3])
        if min(oh, ow) < 1:
            raise Unsupported(f"sizes {sizes[2:]} must be at least 1")
    else:
        if scales is None or len(scales) != 4:
            raise Unsupported(f"scales {scales}: give 4 (N, C, H, W)")
        if list(scales[:2]) != [1.0, 1.0]:
            raise Unsupported("resizing the batch or channels")
        if not all(math.isfinite(v) and v > 0 for v in scales[2:]):
            raise Unsupported(f"scales {scales[2:]} must be positive finite numbers")
        oh, ow = int(math.floor(h * scales[2])), int(math.floor(w * scales[3]))
        if oh != h * scales[2] or ow != w * scales[3]:  # ONNX then maps with the scale itself
            raise Unsupported(f"scales {scales[2:]} that do not give whole sizes")
    integer = oh % h == 0 and ow % w == 0
    if mode == "nearest":
        if transform != "asymmetric":
            raise Unsupported(f"nearest with coordinate_transformation_mode={transform}")
        # round_prefer_floor rounds x.5 down like floor; with factors up to 2 nothing else
        near_floor = nearest == "round_prefer_floor" and integer and max(oh // h, ow // w) <= 2
        if nearest != "floor" and not near_floor:
            raise Unsupported(f"nearest_mode={nearest}")
        cnnc_mode = "nearest"
    elif mode == "linear":
        # torch's align_corners=False is half_pixel; pytorch_half_pixel differs at size 1
        if transform not in ("pytorch_half_pixel", "half_pixel") or (
            transform == "pytorch_half_pixel" and min(oh, ow) == 1
        ):
            raise Unsupported(f"linear with coordinate_transformation_mode={transform}")
        cnnc_mode = "bilinear"
    else:
        raise Unsupported(f"mode {mode}")
    args = {"mode": cnnc_mode} if cnnc_mode == "bilinear" else {}
    if integer:
        return [
            ctx.add("upsample", [x], {"scale": _arg_pair((oh // h, ow // w)), **args}, (c, oh, ow))
        ]
    if cnnc_mode == "nearest":
        args = {"mode": "nearest"}
    return [ctx.add("resize", [x], {"size": (oh, ow), **args}, (c, oh, ow))]


# ---- identities -----------------------------------------------------------------------------


@handles("Identity")
def _identity(ctx, node, ins, attrs):
    return [ins[0]]


@handles("Dropout")
def _dropout(ctx, node, ins, attrs):
    return [_tensor(ins[0]), Unavailable("Dropout's mask")]


@handles("Cast")
def _cast(ctx, node, ins, attrs):
    if int(attrs["to"]) != 1:  # FLOAT
        raise Unsupported("a cast of a tensor to a type other than float")
    return [ins[0]]


# ---- arithmetic -----------------------------------------------------------------------------


def _per_channel(x: View, k: np.ndarray, what):
    """A constant operand as one value per channel of ``x`` (or None if it is not one)."""
    shape = x.shape
    k = np.asarray(k, np.float32)
    if k.ndim > len(shape) + 1:
        return None
    full = k.reshape((1,) * (len(shape) + 1 - k.ndim) + k.shape)
    if full.shape[0] != 1:
        return None
    axis = len(shape) - 1 if x.kind == "nhwc" else 0
    if any(d != 1 for i, d in enumerate(full.shape[1:]) if i != axis):
        return None
    c = x.node.shape[0]
    if full.shape[1 + axis] not in (1, c):
        return None
    return np.broadcast_to(full.reshape(-1), (c,)).astype(np.float32).copy()


def _scale(ctx, x, k):
    c = x.node.shape[0]
    shape = (c, 1, 1) if len(x.node.shape) == 3 else (c,)
    view = ctx.add("scale", [x], {}, None, {"weight": k.reshape(shape)}, x.kind)
    view.node.from_constant = True
    return view


def _shift(ctx, x, k):
    view = ctx.add("$bias", [x], {}, None, {"bias": k}, x.kind)
    view.node.from_constant = True
    return view


def _tensor_and_constant(ins):
    a, b = ins
    if isinstance(a, View) and isinstance(b, np.ndarray):
        return a, b, False
    if isinstance(b, View) and isinstance(a, np.ndarray):
        return b, a, True
    return None, None, None


@handles("Mul", "Div", "Add", "Sub")
def _arith(ctx, node, ins, attrs):
    t = node.op_type
    x, k, swapped = _tensor_and_constant(ins)
    if x is None:
        if t in ("Div", "Sub"):
            raise Unsupported(f"{t} of two tensors")
        xs = [_tensor(i) for i in ins]
        kinds = {v.kind for v in xs}
        if len(kinds) != 1 or kinds - {"plain", "nhwc"}:
            raise Unsupported("operands of different layouts")
        shapes = [v.node.shape for v in xs]
        full = max(shapes, key=lambda s: (len(s), math.prod(s)))
        if t == "Add" and len(set(shapes)) > 1:
            raise Unsupported(f"an Add that broadcasts {shapes[0]} and {shapes[1]}")
        return [ctx.add("add" if t == "Add" else "mul", xs, {}, full, kind=kinds.pop())]
    if swapped and t in ("Div", "Sub"):
        raise Unsupported(f"{t} of a constant by a tensor")
    per = _per_channel(x, k, t)
    if per is None:
        raise Unsupported(f"{t} by a constant of shape {np.shape(k)} (not one per channel)")
    if t == "Div":
        return [_scale(ctx, x, 1.0 / per)]
    if t == "Mul":
        return [_scale(ctx, x, per)]
    return [_shift(ctx, x, -per if t == "Sub" else per)]


@handles("Sum")
def _sum(ctx, node, ins, attrs):
    xs = [_plain(i) for i in ins]
    if len(xs) == 1:
        return [xs[0]]
    if len({v.shape for v in xs}) > 1:
        raise Unsupported("a Sum that broadcasts")
    return [ctx.add("add", xs, {}, xs[0].shape)]


# ---- constants ------------------------------------------------------------------------------


@handles("Shape")
def _shape(ctx, node, ins, attrs):
    x = _tensor(ins[0])
    full = np.array([1, *x.shape], np.int64)  # batch 1: the rest is per sample
    start, end = attrs.get("start", 0), attrs.get("end", None)
    return [full[start:end]]


def fold(ctx, node, ins):
    """Evaluate a node whose inputs are all constants with onnx's reference evaluator."""
    from onnx.reference import ReferenceEvaluator

    if node.op_type == "ConstantOfShape" and ins[0].size <= 8:  # the bulk of Caffe2 exports
        value = attrs_of(ctx.onnx, node).get("value")
        fill = (
            ctx.onnx.numpy_helper.to_array(value) if value is not None else np.zeros(1, np.float32)
        )
        return [np.full(tuple(int(d) for d in ins[0]), fill.reshape(-1)[0], fill.dtype)]

    feeds = {}
    for name, value in zip(node.input, ins):
        if name:
            feeds[name] = value
    h = ctx.onnx.helper
    graph = h.make_graph(
        [node],
        "fold",
        [
            h.make_tensor_value_info(n, h.np_dtype_to_tensor_dtype(v.dtype), None)
            for n, v in feeds.items()
        ],
        [h.make_tensor_value_info(n, 0, None) for n in node.output if n],
    )
    model = h.make_model(graph, opset_imports=[h.make_opsetid("", ctx.opset)])
    try:
        outs = ReferenceEvaluator(model).run(None, feeds)
    except Exception as exc:  # the reference evaluator's own failure on a malformed node
        raise Unsupported(f"cannot fold this constant node ({type(exc).__name__}: {exc})") from None
    return [np.asarray(o) for o in outs]
