"""Import an ONNX model as a ``.cnn`` spec and its weights.

Three steps: (1) walk the graph in order, folding every node whose inputs are all constants
(``Shape`` of a tensor is a constant too: the per-sample shape is known) and translating the
others through :data:`.onnx_handlers.HANDLERS`, one entry per ONNX op type, into cnnc
layers (:mod:`.onnx_graph`); (2) rewrite patterns spread over several ONNX nodes
(:mod:`.onnx_patterns`); (3) write one statement per chain of layers, named after the ONNX
graph (:mod:`.onnx_spec`), and check the result with cnnc itself.

Anything without a ``.cnn`` equivalent is collected and reported at once (op type, count,
first node name); nothing is written then.
"""

from __future__ import annotations

import graphlib
import math
import os
from collections import Counter
from pathlib import Path

import numpy as np

from ..compiler import DataError, error
from . import onnx_blocks, require_onnx
from .onnx_graph import Node, View
from .onnx_handlers import HANDLERS, Context, Unavailable, Unsupported, attrs_of, fold
from .onnx_patterns import rewrite
from .onnx_spec import identifier, write_spec

MAX_MODEL_BYTES = 2**31 - 1  # protobuf's own limit; checked before reading
FIRST_OPSET = 7
NEWEST_KNOWN = 22  # 22 only added bfloat16 to the ops read here; later: newer_definition


def _signature(schema):
    """An op definition without its type lists: attributes, inputs, outputs."""
    attrs = sorted(
        (name, int(a.type), a.default_value.SerializeToString())
        for name, a in schema.attributes.items()
    )
    ins = [(i.name, int(i.option)) for i in schema.inputs]
    outs = [(o.name, int(o.option)) for o in schema.outputs]
    return attrs, ins, outs, schema.min_input, schema.max_input


def newer_definition(onnx, op_type: str, opset: int) -> int | None:
    """The opset of a definition newer than cnnc knows that changed more than types, if
    ``op_type`` at ``opset`` has one (later opsets mostly add element types)."""
    try:
        schema = onnx.defs.get_schema(op_type, opset)
    except Exception:  # an op that does not exist at that opset: reported elsewhere
        return None
    while schema.since_version > NEWEST_KNOWN:
        try:
            previous = onnx.defs.get_schema(op_type, schema.since_version - 1)
        except Exception:  # the op is new in that opset
            return schema.since_version
        if _signature(previous) != _signature(schema):
            return schema.since_version
        schema = previous
    return None


# ---- the walk -------------------------------------------------------------------------------


def _per_sample_shape(value_info, name):
    t = value_info.type.tensor_type
    if t.elem_type != 1:
        raise DataError(error(f"input '{name}' is not float32; cnnc runs float32 only"))
    dims = [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim]
    if len(dims) not in (2, 4) or any(d is None or d < 1 for d in dims[1:]):
        raise DataError(
            error(
                f"input '{name}' has shape {dims}; cnnc takes (N, C, H, W) or (N, F) "
                "with known C, H, W"
            )
        )
    return tuple(dims[1:])


def translate(model, bind: dict | None = None):
    """The model's graph as cnnc layers: (inputs {name: Node}, outputs {name: Node}, nodes)."""
    onnx = require_onnx()
    graph = model.graph
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    if opset is None:
        raise DataError(
            error(
                "the model declares no ONNX opset (opset_import), so its ops cannot be read",
                hint="is it an ONNX model? exporters always write one",
            )
        )
    if opset < FIRST_OPSET or opset > onnx.defs.onnx_opset_version():
        raise DataError(
            error(
                f"ONNX opset {opset} is not supported; cnnc reads opsets 7 to 22, and later "
                "ones where its ops only gained element types"
            )
        )
    others = sorted({o.domain for o in model.opset_import} - {"", "ai.onnx"})
    ctx = Context(onnx, opset)
    values: dict = {}
    for init in graph.initializer:
        values[init.name] = initializer_array(onnx, init)
    for name, value in (bind or {}).items():
        values[name] = np.asarray(value)
    inputs = {}
    for vi in graph.input:
        if vi.name in values:
            continue
        shape = _per_sample_shape(vi, vi.name)
        node = Node("$input", [], {}, shape, ("input", vi.name, vi.name))
        inputs[vi.name] = node
        values[vi.name] = View(node)
    if not inputs:
        raise DataError(error("the model has no tensor inputs"))
    problems: list[tuple[str, str, str]] = []
    for onnx_node in in_order(graph.node, set(values)):
        ctx.current = onnx_node
        ins = [values.get(i) if i else None for i in onnx_node.input]
        try:
            outs = _translate_node(ctx, onnx_node, ins)
        except Unsupported as exc:
            problems.append((onnx_node.op_type, _node_name(onnx_node), exc.reason))
            outs = [_POISON] * len(onnx_node.output)
        except MALFORMED as exc:  # a handler meeting values no exporter writes
            if os.environ.get("CNNC_DEBUG"):
                raise
            reason = f"malformed attributes or constants ({type(exc).__name__}: {exc})"
            problems.append((onnx_node.op_type, _node_name(onnx_node), reason))
            outs = [_POISON] * len(onnx_node.output)
        for name, value in zip(onnx_node.output, outs):
            values[name] = value
    outputs = {}
    for vi in graph.output:
        v = values.get(vi.name)
        if v is _POISON:
            continue
        if not isinstance(v, View) or v.kind != "plain":
            problems.append(
                ("output", vi.name, "an output that is a constant or in an ONNX layout")
            )
            continue
        outputs[vi.name] = v.node
    if problems:
        raise DataError(_report(problems, others))
    out_nodes, seen = [], set()
    for node in outputs.values():  # an output that is an input or another output: a layer
        if node.op == "$input" or id(node) in seen:
            node = Node("identity", [node], {}, node.shape, node.origin)
            ctx.nodes.append(node)
        seen.add(id(node))
        out_nodes.append(node)
    nodes = rewrite(ctx.nodes, out_nodes)
    for (name, _), node in zip(list(outputs.items()), out_nodes):
        outputs[name] = node
    left = [n for n in nodes if n.pseudo and n.op != "$input"]
    if left:
        raise DataError(
            _report(
                [
                    (
                        n.origin[0],
                        n.origin[1],
                        f"part of a pattern cnnc does not recognise ({n.op[1:]})",
                    )
                    for n in left
                ],
                others,
            )
        )
    return inputs, outputs, nodes


_POISON = object()  # the value of a node that could not be translated (already reported)

#: What a handler raises on attributes or constants out of their range (a missing attribute,
#: a zero where a divisor goes): reported as that node's problem, not as a bug in cnnc.
MALFORMED = (ValueError, TypeError, KeyError, IndexError, ArithmeticError)


def _node_name(node) -> str:
    return node.name or next((o for o in node.output if o), "") or node.op_type


def initializer_array(onnx, tensor) -> np.ndarray:
    """A tensor's values, its stored data checked against its dims before NumPy reads it."""
    dims = tuple(int(d) for d in tensor.dims)
    if any(d < 0 for d in dims):
        raise DataError(error(f"initializer '{tensor.name}' has negative dims {dims}"))
    if tensor.raw_data:
        try:
            itemsize = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type)).itemsize
        except Exception:  # an element type NumPy has no dtype for: left to to_array
            itemsize = 0
        packed = {getattr(onnx.TensorProto, t, -1) for t in ("INT4", "UINT4", "FLOAT4E2M1")}
        count = math.prod(dims)
        need = (count + 1) // 2 if tensor.data_type in packed else count * itemsize
        if itemsize and len(tensor.raw_data) != need:
            raise DataError(
                error(
                    f"initializer '{tensor.name}' holds {len(tensor.raw_data)} bytes; its dims "
                    f"{dims} need {need}"
                )
            )
    try:
        return onnx.numpy_helper.to_array(tensor)
    except Exception as exc:  # data of another length than the dims, an unknown type
        raise DataError(
            error(f"cannot read initializer '{tensor.name}' ({type(exc).__name__}: {exc})")
        ) from None


def in_order(nodes, known: set) -> list:
    """The nodes so that each input is computed before it is used. ONNX requires that order
    but not every writer keeps it; a name nothing defines, or a cycle, is an error."""
    producer = {out: i for i, node in enumerate(nodes) for out in node.output if out}
    undefined = [
        (node, name)
        for node in nodes
        for name in node.input
        if name and name not in known and name not in producer
    ]
    if undefined:
        node, name = undefined[0]
        more = f" (and {len(undefined) - 1} more)" if len(undefined) > 1 else ""
        raise DataError(
            error(
                f"ONNX {node.op_type} '{_node_name(node)}' reads '{name}', which no node, "
                f"input or initializer defines{more}"
            )
        )
    sorter = graphlib.TopologicalSorter()
    for i, node in enumerate(nodes):
        sorter.add(i, *(producer[n] for n in node.input if n and n not in known))
    try:
        order = list(sorter.static_order())
    except graphlib.CycleError as exc:
        cycle = " -> ".join(f"{nodes[i].op_type} '{_node_name(nodes[i])}'" for i in exc.args[1])
        raise DataError(error(f"the graph has a cycle: {cycle}")) from None
    seen = set(known)  # keep the file's order where it is one already (stable names)
    for node in nodes:
        if any(n and n not in seen for n in node.input):
            return [nodes[i] for i in order]
        seen.update(node.output)
    return list(nodes)


def _translate_node(ctx, node, ins) -> list:
    """Fold a node of constants, or translate it with its handler."""
    if node.domain not in ("", "ai.onnx"):
        raise Unsupported(f"domain '{node.domain}'")
    gone = [i for i in ins if isinstance(i, Unavailable)]
    if gone:
        raise Unsupported(f"uses {gone[0].reason}, which cnnc does not compute")
    on_tensors = any(isinstance(i, View) or i is _POISON for i in ins)
    if node.op_type == "Constant" or not (on_tensors or node.op_type == "Shape"):
        return fold(ctx, node, [] if node.op_type == "Constant" else ins)
    if node.op_type not in HANDLERS:
        raise Unsupported("no .cnn equivalent")
    newer = newer_definition(ctx.onnx, node.op_type, ctx.opset) if ctx.opset > 22 else None
    if newer is not None:
        raise Unsupported(f"its opset-{newer} definition is newer than cnnc knows")
    if any(i is _POISON for i in ins):
        return [_POISON] * len(node.output)
    return HANDLERS[node.op_type](ctx, node, ins, attrs_of(ctx.onnx, node))


def _report(problems, others=()):
    """One diagnostic per ONNX op type: count, first node name and why."""
    counts = Counter(p[0] for p in problems)
    first = {}
    for op_type, name, reason in problems:
        first.setdefault(op_type, (name, reason))
    diags = []
    for op_type, count in counts.items():
        name, reason = first[op_type]
        times = f"{count} node{'s' if count > 1 else ''}"
        diags.append(error(f"ONNX {op_type} ({times}, first '{name}'): {reason}"))
    if others:
        diags.append(error(f"custom operator domains are not supported: {', '.join(others)}"))
    return diags


# ---- the public entry points ----------------------------------------------------------------


def read_model(path):
    """Load an ONNX file within limits: size checked first, no external data."""
    onnx = require_onnx()
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise DataError(error(f"cannot read '{path}': {exc.strerror or exc}")) from None
    if not path.is_file():
        raise DataError(error(f"cannot read '{path}': not a file"))
    if size == 0:
        raise DataError(error(f"'{path}' is empty (0 bytes), not an ONNX model"))
    if size > MAX_MODEL_BYTES:
        raise DataError(error(f"'{path}' is {size} bytes, above ONNX's 2 GiB limit"))
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf's DecodeError and friends: not an ONNX file
        raise DataError(
            error(f"'{path}' is not a valid ONNX model ({type(exc).__name__})")
        ) from None
    for init in model.graph.initializer:
        if init.data_location == onnx.TensorProto.EXTERNAL:
            raise DataError(
                error(
                    f"'{path}' keeps weights in external files, which cnnc does not read",
                    hint="save the model with its weights inside",
                )
            )
    return model


def import_model(model, name: str | None = None, bind: dict | None = None, blocks: bool = False):
    """(spec text, weights {LAYER.weight: array}, checked Network) for an ONNX model proto;
    with ``blocks``, repeated structures become ``block``s (:mod:`.onnx_blocks`)."""
    from .. import load

    inputs, outputs, nodes = translate(model, bind)
    if not outputs:
        raise DataError(error("the model has no outputs cnnc can compute"))
    net_name = identifier(name or model.graph.name or "imported", "imported")
    found, expansion = [], {}
    if blocks:
        nodes, outs, found, expansion = onnx_blocks.fold(
            list(inputs.values()), nodes, list(outputs.values())
        )
        outputs = dict(zip(outputs, outs))
    text, order = write_spec(inputs, outputs, nodes, net_name, found)
    order = [m for n in order for m in expansion.get(id(n), [n])]
    net = load(text, filename=f"{net_name}.cnn")
    weights = {}
    for layer, node in zip(net.layers, order):
        if layer.op != node.op:
            raise RuntimeError(f"layer order mismatch: {layer.name} is {layer.op}, not {node.op}")
        for key, shape in (*layer.weights.items(), *layer.buffers.items()):
            value = np.asarray(node.weights[key], np.float32)
            weights[f"{layer.name}.{key}"] = np.ascontiguousarray(value.reshape(shape))
    return text, weights, net


def import_file(path, out=None, weights_out=None, name=None, blocks=False):
    """Import ``path``; write the spec and weights when given paths: both or neither (each
    target checked before the import, both staged before either replaces a file)."""
    from ..compiler import write_all_atomically
    from ..runtime import weights as weight_io
    from ..runtime.data import check_output_path

    for target, suffix, flag in ((out, ".cnn", "-o"), (weights_out, ".npz", "--weights-out")):
        if target is not None:
            check_output_path(Path(target), flag, (suffix,), avoid=[path])
    model = read_model(path)
    text, weights, net = import_model(model, name or Path(path).stem, blocks=blocks)
    files = {}
    if out is not None:
        files[Path(out)] = text.encode()
    if weights_out is not None:
        files[Path(weights_out)] = weight_io.to_bytes(weights)
    write_all_atomically(files)
    return text, weights, net
