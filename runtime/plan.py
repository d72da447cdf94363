"""Execution plans: a schedule of kernel steps, packed weights, and buffers reused by liveness.

The plan is device-neutral: steps name kernels as the ops are named (``conv``, ``maxpool``,
...) and every backend (cpu.py, cuda.py) implements the same names. Optimisations, each
optional so that tests can compare against the plain plan:

- batch norm folded into the convolution or fc before it;
- a residual ``add`` folded into the epilogue of the conv that produces its last operand;
- activations fused into the epilogue of their producer (conv, fc, batch norm, add).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from math import prod

import numpy as np

from ..compiler.network import Layer, Network

#: Activation codes shared by every backend's fused epilogue.
ACT_CODES = {"relu": 1, "relu6": 2, "leaky_relu": 3, "sigmoid": 4, "tanh": 5}
WEIGHTED = ("conv", "dwconv", "convt", "fc")


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
class Step:
    kernel: str
    layers: list[str]
    inputs: list[int]
    output: int
    attrs: dict = field(default_factory=dict)
    raw: dict = field(default_factory=dict)     # PyTorch-layout weights before packing
    arrays: dict = field(default_factory=dict)  # packed for the kernels
    residual: int | None = None
    macs: int = 0

    @property
    def label(self) -> str:
        return self.layers[0] + (" +" + "+".join(n.rsplit(".", 1)[-1] for n in self.layers[1:])
                                 if len(self.layers) > 1 else "")


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
                need = max(need, batch * x[0] * x[1] * a["kh"] * a["kw"] *
                           self.values[s.output].shape[2])
        return need


def runtime_shape(shape: tuple) -> tuple:
    return (shape[1], shape[2], shape[0]) if len(shape) == 3 else shape


def _windows(args: dict) -> dict:
    (kh, kw), (sh, sw) = args["k"], args["s"]
    (ph, pw) = args["p"]
    (dh, dw) = args.get("d", (1, 1))
    return dict(kh=kh, kw=kw, sh=sh, sw=sw, ph=ph, pw=pw, dh=dh, dw=dw)


def build_plan(net: Network, weights: dict[str, np.ndarray] | None,
               optimize: bool = True) -> Plan:
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
        step = _step_for(layer, ins, weights)
        if step is None:  # identity, dropout, or a flatten that moves nothing
            of_layer[id(layer)] = new_value(layer.shape, alias=ins[0])
            continue
        step.output = of_layer[id(layer)] = new_value(layer.shape)
        steps.append(step)
    outputs = {name: of_layer[id(layer)] for name, layer in net.outputs.items()}

    if optimize:
        steps = _fold_batch_norm(steps, values, outputs)
        steps = _fold_residual_add(steps, values, outputs, inputs)
        steps = _fuse_activations(steps, values, outputs)
    for step in steps:
        _pack(step)
    plan = Plan(net, steps, values, inputs, outputs, [], optimize)
    _assign_slots(plan)
    return plan


def _step_for(layer: Layer, ins: list[int], weights) -> Step | None:
    op, a = layer.op, layer.args
    raw = {} if weights is None else {
        k: weights[f"{layer.name}.{k}"] for k in (*layer.weights, *layer.buffers)}
    step = Step(op, [layer.name], ins, -1, raw=raw, macs=layer.macs)
    if op in ("identity", "dropout"):
        return None
    if op == "flatten":
        shape = layer.inputs[0].shape
        if len(shape) == 1 or shape[1:] == (1, 1):
            return None
        return step
    if op in ("conv", "dwconv"):
        c_in = layer.inputs[0].shape[0]
        depthwise = a["g"] == c_in and a["g"] > 1
        step.kernel = "dwconv" if depthwise else "conv"
        step.attrs = dict(_windows(a), groups=a["g"], act=0, alpha=0.0,
                          mult=a["out"] // c_in if depthwise else 1)
    elif op == "convt":
        step.attrs = dict(_windows(a), groups=a["g"], act=0, alpha=0.0)
    elif op == "fc":
        step.attrs = dict(act=0, alpha=0.0)
    elif op in ("maxpool", "avgpool"):
        step.attrs = _windows(a)
        step.attrs["count_pad"] = a.get("count_pad", True)
    elif op == "bn":
        step.kernel = "affine"
        step.attrs = dict(act=0, alpha=0.0, eps=a["eps"])
    elif op in ACT_CODES:
        step.kernel = "act"
        step.attrs = dict(act=ACT_CODES[op], alpha=a.get("a", 0.0))
    elif op == "add":
        step.attrs = dict(act=0, alpha=0.0)
    elif op == "lrn":
        step.attrs = dict(size=a["size"], alpha=a["alpha"], beta=a["beta"], k=a["k"])
    elif op == "upsample":
        step.attrs = dict(sh=a["scale"][0], sw=a["scale"][1], bilinear=a["mode"] == "bilinear")
    elif op == "crop":
        (_, h, w), (_, hr, wr) = layer.inputs[0].shape, layer.inputs[1].shape
        step.inputs = ins[:1]
        step.attrs = dict(oy=(h - hr) // 2, ox=(w - wr) // 2)
    return step


def _consumers(steps: list[Step], vid: int) -> list[Step]:
    return [s for s in steps if vid in s.inputs or s.residual == vid]


def _single_use(steps, values, outputs, vid) -> bool:
    aliased = any(v.alias == vid for v in values.values())
    return len(_consumers(steps, vid)) == 1 and vid not in outputs.values() and not aliased


def _producer(steps, vid) -> Step | None:
    return next((s for s in steps if s.output == vid), None)


def _fold_batch_norm(steps, values, outputs):
    kept = []
    for step in steps:
        src = _producer(kept, step.inputs[0]) if step.kernel == "affine" else None
        if (src is not None and src.kernel in WEIGHTED and src.attrs["act"] == 0
                and src.residual is None and _single_use(steps, values, outputs, src.output)):
            src.output = step.output
            src.layers += step.layers
            raw = step.raw
            if not raw:
                continue
            scale = raw["weight"] / np.sqrt(raw["running_var"] + step.attrs["eps"])
            shift = raw["bias"] - raw["running_mean"] * scale
            w = src.raw["weight"]
            if src.kernel == "convt":
                g = src.attrs["groups"]
                og = w.shape[1]
                per_in = scale.reshape(g, og)[np.arange(w.shape[0]) // (w.shape[0] // g)]
                src.raw["weight"] = (w * per_in[:, :, None, None]).astype(np.float32)
            else:
                src.raw["weight"] = (w * scale.reshape((-1,) + (1,) * (w.ndim - 1))).astype(
                    np.float32)
            bias = src.raw.get("bias", np.zeros_like(scale))
            src.raw["bias"] = (bias * scale + shift).astype(np.float32)
            continue
        kept.append(step)
    return kept


def _fold_residual_add(steps, values, outputs, inputs):
    kept = []
    for step in steps:
        if step.kernel == "add" and len(step.inputs) == 2 and step.attrs["act"] == 0:
            for mine, other in ((step.inputs[0], step.inputs[1]),
                                (step.inputs[1], step.inputs[0])):
                src = _producer(kept, mine)
                if (src is None or src.kernel not in ("conv", "dwconv", "fc")
                        or src.attrs["act"] or src.residual is not None
                        or not _single_use(steps, values, outputs, mine) or mine == other):
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
            if (src is not None and src.kernel in (*WEIGHTED, "affine", "add")
                    and src.attrs["act"] == 0
                    and _single_use(steps, values, outputs, step.inputs[0])):
                src.attrs["act"] = step.attrs["act"]
                src.attrs["alpha"] = step.attrs["alpha"]
                src.output = step.output
                src.layers += step.layers
                continue
        kept.append(step)
    return kept


def _pack(step: Step):
    """Weights in the layouts the kernels read (see cpu.py), float32, contiguous."""
    raw, a = step.raw, step.attrs
    f32 = np.float32
    if not raw:
        return
    if step.kernel == "conv":
        w = raw["weight"]
        out, cg, kh, kw = w.shape
        g = a["groups"]
        packed = w.reshape(g, out // g, cg, kh, kw).transpose(0, 3, 4, 2, 1)
        step.arrays["w"] = np.ascontiguousarray(packed.reshape(g, kh * kw * cg, out // g), f32)
        step.arrays["b"] = np.ascontiguousarray(raw.get("bias", np.zeros(out)), f32)
    elif step.kernel == "dwconv":
        w = raw["weight"]
        step.arrays["w"] = np.ascontiguousarray(w[:, 0].transpose(1, 2, 0), f32)
        step.arrays["b"] = np.ascontiguousarray(raw.get("bias", np.zeros(w.shape[0])), f32)
    elif step.kernel == "convt":
        w = raw["weight"]
        c_in, og, kh, kw = w.shape
        g = a["groups"]
        packed = w.reshape(g, c_in // g, og, kh, kw).transpose(0, 1, 3, 4, 2)
        step.arrays["w"] = np.ascontiguousarray(packed.reshape(g, c_in // g, kh * kw * og), f32)
        step.arrays["b"] = np.ascontiguousarray(raw.get("bias", np.zeros(og * g)), f32)
    elif step.kernel == "fc":
        w = raw["weight"]
        step.arrays["w"] = np.ascontiguousarray(w, f32)
        step.arrays["b"] = np.ascontiguousarray(raw.get("bias", np.zeros(w.shape[0])), f32)
    elif step.kernel == "affine":
        scale = raw["weight"] / np.sqrt(raw["running_var"] + a["eps"])
        step.arrays["scale"] = np.ascontiguousarray(scale, f32)
        step.arrays["shift"] = np.ascontiguousarray(raw["bias"] - raw["running_mean"] * scale,
                                                    f32)
    step.raw = {}


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
