"""Execution plans: a schedule of kernel steps, packed weights, and buffers reused by liveness.

The plan is device-neutral: steps name kernels (lowering.py maps ops to them) and every
backend (backends/cpu/, backends/cuda/) registers the same names. Optimisations, each
optional so that tests can compare against the plain plan:

- batch norm and layer scale (per-channel affine steps) folded into the convolution or fc
  before them;
- a residual ``add`` folded into the epilogue of the conv that produces its last operand;
- activations fused into the epilogue of their producer (conv, fc, batch norm, add, mul);
- inverted-residual chains (1x1 expansion, depthwise, 1x1 projection) marked for backends
  that run them in bands of rows (``Plan.chains``; the CPU's bands.py).
"""

from __future__ import annotations

from bisect import bisect_left, insort
from dataclasses import dataclass, field
from itertools import count
from math import prod

import numpy as np

from ..compiler import Network
from .lowering import WEIGHTED, Step, lower, pack


@dataclass
class Value:
    """A tensor of the plan; ``shape`` is per sample in the runtime layout (H, W, C) or (C,)."""

    id: int
    shape: tuple
    alias: int | None = None  # shares another value's buffer (identity, dropout, flatten 1x1)
    slot: int = -1

    @property
    def size(self) -> int:
        return prod(self.shape)


@dataclass
class Plan:
    network: Network
    steps: list[Step]
    values: dict[int, Value]
    inputs: dict[str, int]
    outputs: dict[str, int]
    slot_sizes: list[int]
    optimized: bool
    #: inverted-residual chains a backend may run in bands of rows (``_band_chains``): each
    #: (first step's index, step count); their buffers live from the chain's first step to
    #: its last, so that a band may write any of them while another is still to be read
    chains: list[tuple[int, int]] = field(default_factory=list)

    def root(self, vid: int) -> Value:
        v = self.values[vid]
        while v.alias is not None:
            v = self.values[v.alias]
        return v

    @property
    def peak_floats(self) -> int:
        """Floats per sample held by the reused buffers (the plan's peak)."""
        return sum(self.slot_sizes)

    @property
    def naive_floats(self) -> int:
        """Floats per sample if every tensor had its own buffer."""
        return sum(v.size for v in self.values.values() if v.alias is None)

    @property
    def weight_floats(self) -> int:
        return sum(a.size for s in self.steps for a in s.arrays.values())

    def workspace_floats(self, batch: int) -> int:
        """Scratch memory (transposed-conv column buffers; the gated input of a convolution
        that absorbed a squeeze-and-excitation multiply, on backends that apply the gate
        to the input)."""
        need = 0
        for s in self.steps:
            if s.kernel == "conv" and len(s.inputs) == 2:
                need = max(need, batch * self.values[s.inputs[0]].size)
            if s.kernel == "convt":
                x = self.values[s.inputs[0]].shape
                a = s.attrs
                need = max(
                    need, batch * x[0] * x[1] * a["kh"] * a["kw"] * self.values[s.output].shape[2]
                )
        return need


def runtime_shape(shape: tuple) -> tuple:
    return (shape[1], shape[2], shape[0]) if len(shape) == 3 else shape


def build_plan(
    net: Network, weights: dict[str, np.ndarray] | None, optimize: bool = True, consume=False
) -> Plan:
    """Compile a plan. With ``weights=None`` only its structure and memory are computed
    (for estimates before any weight is allocated). ``consume``: ``weights`` is the caller's
    to give away; it is emptied once the steps hold their raw weights, so that each raw
    array is freed as soon as its layer is packed instead of all of them at the end (VGG-19:
    the conv weights' 80 MB less at the peak)."""
    values: dict[int, Value] = {}
    of_layer: dict[int, int] = {}

    def new_value(shape, alias=None) -> int:
        vid = len(values)
        values[vid] = Value(vid, runtime_shape(shape), alias)
        return vid

    inputs = {}
    for name, layer in net.inputs.items():
        inputs[name] = of_layer[id(layer)] = new_value(layer.shape)

    steps: list[Step] = []
    for layer in net.layers:
        ins = [of_layer[id(i)] for i in layer.inputs]
        step = lower(layer, ins, weights)
        if step is None:  # identity, dropout, or a flatten that moves nothing
            of_layer[id(layer)] = new_value(layer.shape, alias=ins[0])
            continue
        step.output = of_layer[id(layer)] = new_value(layer.shape)
        steps.append(step)
    outputs = {name: of_layer[id(layer)] for name, layer in net.outputs.items()}
    if consume and weights is not None:
        weights.clear()

    if optimize:
        steps = _fold_affine(steps, values, outputs)
        steps = _fold_residual_add(steps, values, outputs, inputs)
        steps = _fuse_activations(steps, values, outputs)
        steps = _fold_gate(steps, values, outputs)
    for step in steps:
        pack(step)
    plan = Plan(net, steps, values, inputs, outputs, [], optimize)
    if optimize:
        plan.chains = _band_chains(steps, values, outputs)
    _assign_slots(plan)
    return plan


class _Readers:
    """How many steps read each value (inputs and residuals), and which values are aliased:
    the single-use test of the fusion passes in O(1) instead of a scan of every step."""

    def __init__(self, steps: list[Step], values: dict[int, Value], outputs: dict[str, int]):
        self.count: dict[int, int] = {}
        for step in steps:
            for vid in _reads(step):
                self.count[vid] = self.count.get(vid, 0) + 1
        self.aliased = {v.alias for v in values.values() if v.alias is not None}
        self.alias_children: dict[int, int] = {}
        for v in values.values():
            if v.alias is not None:
                self.alias_children[v.alias] = self.alias_children.get(v.alias, 0) + 1
        self.outputs = set(outputs.values())

    def single_use(self, vid: int) -> bool:
        return self.count.get(vid, 0) == 1 and vid not in self.outputs and vid not in self.aliased

    def only_through_alias(self, vid: int) -> bool:
        """Read by nobody but the one identity value that aliases it."""
        return not self.count.get(vid, 0) and self.alias_children.get(vid, 0) == 1


def _reads(step: Step) -> tuple:
    return (*step.inputs, *([step.residual] if step.residual is not None else []))


class _Kept:
    """The steps a pass keeps, with each one's position and producer looked up by output."""

    def __init__(self):
        self.steps: list[Step] = []
        self.producer: dict[int, Step] = {}
        self.position: dict[int, int] = {}

    def append(self, step: Step):
        self.position[id(step)] = len(self.steps)
        self.producer[step.output] = step
        self.steps.append(step)

    def retarget(self, src: Step, output: int):
        """``src`` now writes ``output`` (it absorbed the step that wrote it)."""
        del self.producer[src.output]
        src.output = output
        self.producer[output] = src


def _fold_affine(steps, values, outputs):
    """A per-channel affine step (batch norm, layer scale) right after a conv or fc that
    nothing else reads becomes part of its weights and bias."""
    readers = _Readers(steps, values, outputs)
    kept = _Kept()
    for step in steps:
        src = kept.producer.get(step.inputs[0]) if step.kernel == "affine" else None
        if (
            src is not None
            and src.kernel in WEIGHTED
            and src.attrs["act"] == 0
            and src.residual is None
            and readers.single_use(src.output)
        ):
            kept.retarget(src, step.output)
            src.layers += step.layers
            if step.raw:
                _scale_weights(src, step.raw["scale"], step.raw["shift"])
            continue
        kept.append(step)
    return kept.steps


def _scale_weights(src, scale, shift):
    """Output channel o of ``src`` times ``scale[o]``, plus ``shift[o]``."""
    w = src.raw["weight"]
    scale = np.asarray(scale, np.float32)  # float32 products: no float64 copy of the weights
    shift = np.asarray(shift, np.float32)
    if src.kernel == "convt":  # weight (C, out/g, kh, kw): output channels on axis 1 per group
        g = src.attrs["groups"]
        per_in = scale.reshape(g, w.shape[1])[np.arange(w.shape[0]) // (w.shape[0] // g)]
        src.raw["weight"] = (w * per_in[:, :, None, None]).astype(np.float32)
    else:
        scaled = w * scale.reshape((-1,) + (1,) * (w.ndim - 1))  # float32 weights: float32
        src.raw["weight"] = scaled.astype(np.float32, copy=False)  # no second copy
    bias = src.raw.get("bias", np.zeros_like(scale))
    src.raw["bias"] = (bias * scale + shift).astype(np.float32)


def _fold_residual_add(steps, values, outputs, inputs):
    readers = _Readers(steps, values, outputs)
    kept = _Kept()
    graph_inputs = set(inputs.values())
    for step in steps:
        if step.kernel == "add" and len(step.inputs) == 2 and step.attrs["act"] == 0:
            for mine, other in ((step.inputs[0], step.inputs[1]), (step.inputs[1], step.inputs[0])):
                if mine == other:
                    continue
                root = _through_aliases(mine, values, readers)
                src = kept.producer.get(root)
                if (
                    src is None
                    or src.kernel not in ("conv", "dwconv", "fc")
                    or src.attrs["act"]
                    or src.residual is not None
                    or (root == mine and not readers.single_use(mine))
                ):
                    continue
                position = kept.position[id(src)]
                ready = other in graph_inputs or _ready_before(kept, position, other, values)
                if ready:
                    src.residual = other
                    readers.count[other] = readers.count.get(other, 0) + 1
                    kept.retarget(src, step.output)
                    src.layers += step.layers
                    break
            else:
                kept.append(step)
            continue
        kept.append(step)
    return kept.steps


def _fold_gate(steps, values, outputs):
    """Squeeze-and-excitation's ``mul(x, gate)`` (a per-channel gate, no activation) read only
    by a 1x1 convolution becomes a second input of that convolution, which scales its
    weights by the gate instead: a pass over the block's widest activations saved
    (EfficientNet-B0: 16 of them, about 1.5 ms at batch 1). The mul's layer joins the
    conv's label."""
    readers = _Readers(steps, values, outputs)
    gated: dict[int, Step] = {}  # the mul's output -> the mul step
    kept = []
    for step in steps:
        if (
            step.kernel == "mul"
            and len(step.inputs) == 2
            and step.attrs["act"] == 0
            and readers.single_use(step.output)
            and step.output not in readers.aliased
        ):
            out = values[step.output].shape
            for x, gate in (step.inputs, step.inputs[::-1]):
                g = values[gate].shape
                if (
                    len(out) == 3
                    and values[x].shape == out
                    and g[:2] == (1, 1)
                    and g[2] in (1, out[2])
                ):
                    gated[step.output] = (step, x, gate)
                    break
        src = gated.get(step.inputs[0]) if step.kernel == "conv" else None
        if src is not None and _pointwise(step.attrs) and len(step.inputs) == 1:
            mul, x, gate = src
            kept.remove(mul)
            step.inputs = [x, gate]
            step.layers = [step.layers[0], *mul.layers, *step.layers[1:]]
        kept.append(step)
    return kept


def _pointwise(a: dict) -> bool:
    """A 1x1, stride-1, unpadded, ungrouped convolution."""
    return (a["kh"], a["kw"], a["sh"], a["sw"], a["ph"], a["pw"], a["groups"]) == (
        1, 1, 1, 1, 0, 0, 1,
    )  # fmt: skip


def _band_chains(steps, values, outputs) -> list[tuple[int, int]]:
    """Inverted-residual chains: a 1x1 expansion read only by the depthwise convolution
    after it, and the 1x1 projection after that where it reads only the depthwise output
    (not where a squeeze-and-excitation gate sits between them: its global pool needs the
    whole depthwise output first). A backend may run such a chain band by band of rows
    (backends/cpu/bands.py) so that the expansion's wide output is read back while it is in
    the cache. Only consecutive steps."""
    readers = _Readers(steps, values, outputs)
    chains = []
    i = 0
    while i + 1 < len(steps):
        expand, depthwise = steps[i], steps[i + 1]
        if not (
            _plain_pointwise(expand)
            and expand.residual is None
            and depthwise.kernel == "dwconv"
            and depthwise.attrs["mult"] == 1
            and depthwise.residual is None
            and depthwise.inputs == [expand.output]
            and readers.single_use(expand.output)
        ):
            i += 1
            continue
        n = 2
        if i + 2 < len(steps):
            project = steps[i + 2]
            if (
                _plain_pointwise(project)
                and project.inputs == [depthwise.output]
                and readers.single_use(depthwise.output)
                and project.residual not in (expand.output, depthwise.output)
            ):
                n = 3
        chains.append((i, n))
        i += n
    return chains


def _plain_pointwise(step: Step) -> bool:
    """A 1x1 convolution of one input (no gate folded in) on images (not vectors)."""
    return step.kernel == "conv" and len(step.inputs) == 1 and _pointwise(step.attrs)


def _through_aliases(vid: int, values, readers: _Readers) -> int:
    """The value an identity chain (EfficientNet's ``droppath``) ending in ``vid`` aliases,
    when that chain is all it feeds and ``vid`` is read once: the add it feeds can then fold
    into the producer as a residual. ``vid`` itself otherwise."""
    if values[vid].alias is None or not readers.single_use(vid):
        return vid
    root = vid
    while values[root].alias is not None:
        root = values[root].alias
        if not readers.only_through_alias(root) or root in readers.outputs:
            return vid
    return root


def _ready_before(kept: _Kept, position: int, vid: int, values) -> bool:
    root = vid
    while values[root].alias is not None:
        root = values[root].alias
    for candidate in {vid, root}:
        producer = kept.producer.get(candidate)
        if producer is not None and kept.position[id(producer)] < position:
            return True
    return False


def _fuse_activations(steps, values, outputs):
    readers = _Readers(steps, values, outputs)
    kept = _Kept()
    for step in steps:
        if step.kernel == "act":
            src = kept.producer.get(step.inputs[0])
            if (
                src is not None
                and src.kernel in (*WEIGHTED, "affine", "add", "mul")
                and src.attrs["act"] == 0
                and readers.single_use(step.inputs[0])
            ):
                for key in ("act", "alpha", "beta"):
                    src.attrs[key] = step.attrs[key]
                kept.retarget(src, step.output)
                src.layers += step.layers
                continue
        kept.append(step)
    return kept.steps


def _assign_slots(plan: Plan):
    """Give every value a buffer slot; a slot is reused once its last reader has run.

    Best fit: the smallest free slot that holds the value, else the largest free slot grown to
    fit, else a new slot. Free slots are kept sorted by (size, order freed), and each value is
    freed from a per-step list, so the whole pass is O(n log n) in the number of steps.
    """
    roots: dict[int, int] = {}

    def root(vid: int) -> int:
        chain = []
        while vid not in roots and plan.values[vid].alias is not None:
            chain.append(vid)
            vid = plan.values[vid].alias
        found = roots.get(vid, vid)
        for v in (*chain, vid):
            roots[v] = found
        return found

    chain_end = {}
    for first, n in plan.chains:
        for index in range(first, first + n):
            chain_end[index] = first + n - 1
    last_use: dict[int, int] = {}
    for index, step in enumerate(plan.steps):
        for vid in _reads(step):
            last_use[root(vid)] = max(last_use.get(root(vid), 0), chain_end.get(index, index))
    keep = {root(v) for v in (*plan.outputs.values(), *plan.inputs.values())}
    frees_at: dict[int, list[int]] = {}
    for vid, last in last_use.items():  # dict order: the order the old scan freed them in
        if vid not in keep:
            frees_at.setdefault(last, []).append(vid)
    sizes: list[int] = []
    free: list[tuple[int, int, int]] = []  # (size, order freed, slot), sorted
    order = count()

    def allocate(value: Value):
        at = bisect_left(free, (value.size, -1, -1))
        if at < len(free):
            slot = free.pop(at)[2]
        elif free:  # grow the largest free slot rather than open a new one
            largest = bisect_left(free, (free[-1][0], -1, -1))
            slot = free.pop(largest)[2]
            sizes[slot] = value.size
        else:
            slot = len(sizes)
            sizes.append(value.size)
        value.slot = slot

    for vid in plan.inputs.values():
        allocate(plan.values[vid])
    for index, step in enumerate(plan.steps):
        allocate(plan.values[root(step.output)])
        for vid in frees_at.get(index, ()):
            slot = plan.values[vid].slot
            insort(free, (sizes[slot], next(order), slot))
    for value in plan.values.values():
        if value.alias is not None:
            value.slot = plan.values[root(value.id)].slot
    plan.slot_sizes = sizes
