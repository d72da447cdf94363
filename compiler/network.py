"""The checked, costed network: an ordered list of layers and its networkx view.

Layers are kept in source order (block calls expanded in place), which is also a valid
topological order. ``Network.graph`` builds the ``networkx.DiGraph`` on first use, so that
``cnnc check`` does not pay for importing networkx.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from math import prod

from .diagnostics import Location
from .draw import build, render
from .ops import RF, fmt_shape
from .report import network_table

BYTES_PER_ELEMENT = 4  # every tensor is float32


@dataclass(eq=False)
class Instance:
    """One expansion of a block: a cluster in drawings, a prefix in layer names."""

    block: str
    args: dict
    parent: Instance | None
    location: Location | None
    local: str = ""

    @property
    def name(self) -> str:
        if self.parent is None:
            return ""
        prefix = self.parent.name
        return f"{prefix}/{self.local}" if prefix else self.local

    @property
    def path(self) -> tuple[Instance, ...]:
        chain = []
        node = self
        while node is not None and node.parent is not None:
            chain.append(node)
            node = node.parent
        return tuple(reversed(chain))

    def describe(self) -> str:
        shown = ", ".join(f"{k}={_show(v)}" for k, v in self.args.items())
        return f"{self.block}({shown})"

    def __repr__(self) -> str:  # one line: the generated one printed every ancestor
        return f"<Instance {self.name or '(network)'}: {self.describe()}>"


@dataclass(eq=False)
class Layer:
    """One node of the network: an op applied to tensors, with its shape and costs."""

    op: str
    args: dict
    inputs: list[Layer]
    shape: tuple
    scope: Instance
    location: Location | None
    label: str = ""
    local: str = ""
    weights: dict = field(default_factory=dict)
    buffers: dict = field(default_factory=dict)
    macs: int = 0
    rf: RF | None = None

    @property
    def name(self) -> str:
        prefix = self.scope.name
        return f"{prefix}/{self.local}" if prefix else self.local

    @property
    def params(self) -> int:
        return sum(prod(s) for s in self.weights.values())

    @property
    def memory(self) -> int:
        """Bytes of this layer's output for one sample (float32)."""
        return prod(self.shape) * BYTES_PER_ELEMENT

    @property
    def block_path(self) -> tuple[Instance, ...]:
        return self.scope.path

    def __repr__(self) -> str:
        """One line; the generated repr printed each input's whole ancestry (880 MB for
        ResNet-50's last layer)."""
        return f"<Layer {self.name}: {self.label or self.op} -> {fmt_shape(self.shape)}>"


def _show(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, tuple):
        return "(" + ", ".join(_show(x) for x in v) + ")"
    if isinstance(v, Layer):
        return v.name
    return str(v)


@dataclass(eq=False)
class Network:
    """A checked network: inputs, layers in source order, outputs, totals."""

    name: str
    file: str
    inputs: dict[str, Layer]
    layers: list[Layer]
    outputs: dict[str, Layer]
    instances: list[Instance]
    location: Location | None = None
    parameters: dict = field(default_factory=dict)  # network parameters: the values used

    @property
    def input_shapes(self) -> dict[str, tuple]:
        return {k: v.shape for k, v in self.inputs.items()}

    @property
    def output_shapes(self) -> dict[str, tuple]:
        return {k: v.shape for k, v in self.outputs.items()}

    @property
    def total_params(self) -> int:
        return sum(layer.params for layer in self.layers)

    @property
    def total_macs(self) -> int:
        return sum(layer.macs for layer in self.layers)

    @property
    def total_flops(self) -> int:
        """2 x MACs: one multiply and one add each."""
        return 2 * self.total_macs

    @property
    def activation_memory(self) -> int:
        """Bytes of all layer outputs for one sample, if none were freed (the naive sum)."""
        return sum(layer.memory for layer in self.layers)

    @property
    def weight_memory(self) -> int:
        return (
            sum(
                prod(s)
                for layer in self.layers
                for s in (*layer.weights.values(), *layer.buffers.values())
            )
            * BYTES_PER_ELEMENT
        )

    def table(self) -> list[dict]:
        """The rows of ``cnnc check``, inputs first, one dict each (``pandas.DataFrame(rows)``):
        ``name``, ``op`` (its label), ``shape``, ``params``, ``macs``, ``rf`` ((h, w), or None
        where no field is defined), ``file`` and ``line`` of the source (an input's: the
        network's signature)."""
        rows = []
        for layer in (*self.inputs.values(), *self.layers):
            loc = layer.location
            rows.append(
                {
                    "name": layer.name,
                    "op": layer.label or layer.op,
                    "shape": tuple(layer.shape),
                    "params": layer.params,
                    "macs": layer.macs,
                    "rf": tuple(layer.rf.size) if layer.rf else None,
                    "file": loc.file if loc else None,
                    "line": loc.line if loc else None,
                }
            )
        return rows

    def layer(self, name: str) -> Layer:
        for layer in (*self.inputs.values(), *self.layers):
            if layer.name == name:
                return layer
        raise KeyError(name)

    @cached_property
    def graph(self):
        """The network as a ``networkx.DiGraph`` keyed by layer name, in source order.

        Node attributes: ``op``, ``args``, ``label``, ``inputs``, ``shape``, ``params``,
        ``macs``, ``memory``, ``rf``, ``rf_jump``, ``weights``, ``buffers``, ``file``, ``line``,
        ``column``, ``block_path`` (instance names, outermost first) and ``output`` (output
        name or None). Edges carry the ``shape`` of the tensor and the input ``index``.
        """
        import networkx as nx

        g = nx.DiGraph(name=self.name, file=self.file)
        outputs = {id(layer): name for name, layer in self.outputs.items()}
        for layer in (*self.inputs.values(), *self.layers):
            loc = layer.location
            g.add_node(
                layer.name,
                op=layer.op,
                args=dict(layer.args),
                label=layer.label,
                inputs=[i.name for i in layer.inputs],
                shape=layer.shape,
                params=layer.params,
                macs=layer.macs,
                memory=layer.memory,
                rf=layer.rf.size if layer.rf else None,
                rf_jump=tuple(float(j) for j in layer.rf.jump) if layer.rf else None,
                weights=dict(layer.weights),
                buffers=dict(layer.buffers),
                file=loc.file if loc else self.file,
                line=loc.line if loc else None,
                column=loc.column if loc else None,
                block_path=tuple(i.name for i in layer.block_path),
                output=outputs.get(id(layer)),
            )
            for index, src in enumerate(layer.inputs):
                g.add_edge(src.name, layer.name, shape=src.shape, index=index)
        return g

    def to_json(self) -> dict:
        """The contract's JSON object for this network (``cnnc check --json``)."""
        layers = []
        for layer in self.layers:
            loc = layer.location
            layers.append(
                {
                    "name": layer.name,
                    "op": layer.op,
                    "inputs": [i.name for i in layer.inputs],
                    "shape": list(layer.shape),
                    "params": layer.params,
                    "macs": layer.macs,
                    "line": loc.line if loc else None,
                    "column": loc.column if loc else None,
                    "label": layer.label,
                    "memory": layer.memory,
                    "rf": list(layer.rf.size) if layer.rf else None,
                    "block_path": [i.name for i in layer.block_path],
                }
            )
        return {
            "name": self.name,
            "file": self.file,
            "inputs": {k: list(v) for k, v in self.input_shapes.items()},
            "parameters": dict(self.parameters),
            "outputs": {k: list(v) for k, v in self.output_shapes.items()},
            "layers": layers,
            "total_params": self.total_params,
            "total_macs": self.total_macs,
            "total_flops": self.total_flops,
            "activation_memory": self.activation_memory,
        }

    def draw(self, out=None, collapse: bool = False, rankdir: str = "TB"):
        """Graphviz drawing: a ``graphviz.Digraph``, or rendered to ``out`` (see cnnc.draw)."""
        return (
            build(self, collapse, rankdir) if out is None else render(self, out, collapse, rankdir)
        )

    def summary(self) -> str:
        """A Keras-style table of layers with totals (what ``cnnc check`` prints)."""
        return network_table(self)

    def explain(self, layer: str) -> str:
        """The arithmetic behind the rows of the layers named ``layer`` (a name or a glob),
        as ``cnnc check --explain`` prints it."""
        from .explain import explain_text, select

        return "\n\n".join(explain_text(self, x) for _, xs in select([self], layer) for x in xs)

    def _repr_mimebundle_(self, include=None, exclude=None):
        """Jupyter's display: the drawing (SVG) above the layer table (see display.py)."""
        from .display import mimebundle

        return mimebundle(self, include, exclude)

    def __repr__(self) -> str:
        ins = ", ".join(f"{k}: {fmt_shape(v)}" for k, v in self.input_shapes.items())
        return (
            f"<Network {self.name}({ins}): {len(self.layers)} layers, "
            f"{self.total_params:,} params, {self.total_macs:,} MACs>"
        )
