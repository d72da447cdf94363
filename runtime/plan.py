"""Execution plans: a schedule of kernel steps, packed weights, and buffers reused by liveness.

The plan is device-neutral: steps name kernels (lowering.py maps ops to them) and every
backend (backends/cpu/, backends/cuda/) registers the same names. Optimisations, each
optional so that tests can compare against the plain plan:

- batch norm and layer scale (per-channel affine steps) folded into the convolution or fc
  before them;
- a residual ``add`` folded into the epilogue of the conv that produces its last operand;
- activations fused into the epilogue of their producer (conv, fc, batch norm, add, mul).
"""

from __future__ import annotations

from dataclasses import dataclass
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
        """Scratch memory (transposed-conv column buffers)."""
        need = 0
        for s in self.steps:
            if s.kernel == "convt":
                x = self.values[s.inputs[0]].shape
                a = s.attrs
                need = max(
                    need, batch * x[0] * x[1] * a["kh"] * a["kw"] * self.values[s.output].shape[2]
                )
        return need


def runtime_shape(shape: tuple) -> tuple:
    return (shape[1], shape[2], shape[0]) if len(shape) == 3 else shape


def build_plan(net: Network, weights: dict[str, np.ndarray] | None, optimize: bool = True) -> Plan:
    """Compile a plan. With ``weights=None`` only its structure and memory are computed
    (for estimates before any weight is allocated)."""
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

    if optimize:
        steps = _fold_affine(steps, values, outputs)
        steps = _fold_residual_add(steps, values, outputs, inputs)
        steps = _fuse_activations(steps, values, outputs)
    for step in steps:
        pack(step)
    plan = Plan(net, steps, values, inputs, outputs, [], optimize)
    _assign_slots(plan)
    return plan


def _consumers(steps: list[Step], vid: int) -> list[Step]:
    return [s for s in steps if vid in s.inputs or s.residual == vid]


def _single_use(steps, values, outputs, vid) -> bool:
    aliased = any(v.alias == vid for v in values.values())
    return len(_consumers(steps, vid)) == 1 and vid not in outputs.values() and not aliased


def _producer(steps, vid) -> Step | None:
    return next((s for s in steps if s.output == vid), None)


def _fold_affine(steps, values, outputs):
    """A per-channel affine step (batch norm, layer scale) right after a conv or fc that
    nothing else reads becomes part of its weights and bias."""
    kept = []
    for step in steps:
        src = _producer(kept, step.inputs[0]) if step.kernel == "affine" else None
        if (
            src is not None
            and src.kernel in WEIGHTED
            and src.attrs["act"] == 0
            and src.residual is None
            and _single_use(steps, values, outputs, src.output)
        ):
            src.output = step.output
            src.layers += step.layers
            if step.raw:
                _scale_weights(src, step.raw["scale"], step.raw["shift"])
            continue
        kept.append(step)
    return kept


def _scale_weights(src, scale, shift):
    """Output channel o of ``src`` times ``scale[o]``, plus ``shift[o]``."""
    w = src.raw["weight"]
    if src.kernel == "convt":  # weight (C, out/g, kh, kw): output channels on axis 1 per group
        g = src.attrs["groups"]
        per_in = scale.reshape(g, w.shape[1])[np.arange(w.shape[0]) // (w.shape[0] // g)]
        src.raw["weight"] = (w * per_in[:, :, None, None]).astype(np.float32)
    else:
        src.raw["weight"] = (w * scale.reshape((-1,) + (1,) * (w.ndim - 1))).astype(np.float32)
    bias = src.raw.get("bias", np.zeros_like(scale))
    src.raw["bias"] = (bias * scale + shift).astype(np.float32)


def _fold_residual_add(steps, values, outputs, inputs):
    kept = []
    for step in steps:
        if step.kernel == "add" and len(step.inputs) == 2 and step.attrs["act"] == 0:
            for mine, other in ((step.inputs[0], step.inputs[1]), (step.inputs[1], step.inputs[0])):
                src = _producer(kept, mine)
                if (
                    src is None
                    or src.kernel not in ("conv", "dwconv", "fc")
                    or src.attrs["act"]
                    or src.residual is not None
                    or not _single_use(steps, values, outputs, mine)
                    or mine == other
                ):
                    continue
                position = kept.index(src)
                ready = other in inputs.values() or _ready_before(kept, position, other, values)
                if ready:
                    src.residual = other
                    src.output = step.output
                    src.layers += step.layers
                    break
            else:
                kept.append(step)
            continue
        kept.append(step)
    return kept


def _ready_before(steps, position, vid, values) -> bool:
    root = vid
    while values[root].alias is not None:
        root = values[root].alias
    chain = {vid, root}
    return any(s.output in chain for s in steps[:position])


def _fuse_activations(steps, values, outputs):
    kept = []
    for step in steps:
        if step.kernel == "act":
            src = _producer(kept, step.inputs[0])
            if (
                src is not None
                and src.kernel in (*WEIGHTED, "affine", "add", "mul")
                and src.attrs["act"] == 0
                and _single_use(steps, values, outputs, step.inputs[0])
            ):
                for key in ("act", "alpha", "beta"):
                    src.attrs[key] = step.attrs[key]
                src.output = step.output
                src.layers += step.layers
                continue
        kept.append(step)
    return kept


def _assign_slots(plan: Plan):
    """Give every value a buffer slot; a slot is reused once its last reader has run."""
    last_use: dict[int, int] = {}
    for index, step in enumerate(plan.steps):
        for vid in (*step.inputs, *([step.residual] if step.residual is not None else [])):
            last_use[plan.root(vid).id] = index
    keep = {plan.root(v).id for v in (*plan.outputs.values(), *plan.inputs.values())}
    sizes: list[int] = []
    free: list[int] = []

    def allocate(value: Value):
        fits = [s for s in free if sizes[s] >= value.size]
        if fits:
            slot = min(fits, key=lambda s: sizes[s])
        elif free:  # grow the largest free slot rather than open a new one
            slot = max(free, key=lambda s: sizes[s])
            sizes[slot] = value.size
        else:
            slot = len(sizes)
            sizes.append(value.size)
        if slot in free:
            free.remove(slot)
        value.slot = slot

    for vid in plan.inputs.values():
        allocate(plan.values[vid])
    for index, step in enumerate(plan.steps):
        allocate(plan.root(step.output))
        for vid, last in list(last_use.items()):
            if last == index and vid not in keep:
                free.append(plan.values[vid].slot)
                del last_use[vid]
    for value in plan.values.values():
        if value.alias is not None:
            value.slot = plan.root(value.id).slot
    plan.slot_sizes = sizes
