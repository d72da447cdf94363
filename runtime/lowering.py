"""From checked layers to kernel steps: which kernel runs each op, with which attributes, and
its weights packed in the layouts the kernels read.

Most ops lower to the kernel of their own name with their bound arguments as attributes; this
table holds the exceptions (batch norm and layer scale become one per-channel ``affine``, every
pointwise activation the shared ``act`` kernel, slices and shuffles one ``channels`` gather).
Layouts are shared by every backend (see backends/cpu/conv.py for what each means).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from ..compiler import OPS, Activation, Layer

#: Steps whose epilogue fuses a batch norm (folded into the weights) and an activation.
WEIGHTED = ("conv", "dwconv", "convt", "fc")


@dataclass
class Step:
    kernel: str
    layers: list[str]
    inputs: list[int]
    output: int
    attrs: dict = field(default_factory=dict)
    raw: dict = field(default_factory=dict)  # PyTorch-layout weights before packing
    arrays: dict = field(default_factory=dict)  # packed for the kernels
    residual: int | None = None
    macs: int = 0

    @property
    def label(self) -> str:
        return self.layers[0] + (
            " +" + "+".join(n.rsplit(".", 1)[-1] for n in self.layers[1:])
            if len(self.layers) > 1
            else ""
        )


EPILOGUE = dict(act=0, alpha=0.0, beta=0.0)


def _windows(args: dict) -> dict:
    (kh, kw), (sh, sw) = args["k"], args["s"]
    (ph, pw) = args["p"]
    (dh, dw) = args.get("d", (1, 1))
    return dict(kh=kh, kw=kw, sh=sh, sw=sw, ph=ph, pw=pw, dh=dh, dw=dw)


def _conv(step: Step, layer: Layer, a: dict):
    c_in = layer.inputs[0].shape[0]
    depthwise = a["g"] == c_in and a["g"] > 1
    step.kernel = "dwconv" if depthwise else "conv"
    step.attrs = dict(
        _windows(a), groups=a["g"], **EPILOGUE, mult=a["out"] // c_in if depthwise else 1
    )


def _affine(scale_of: Callable):
    def lower(step: Step, layer: Layer, a: dict):
        step.kernel = "affine"
        step.attrs = dict(EPILOGUE)
        if step.raw:
            scale, shift = scale_of(step.raw, a)
            step.raw = {"scale": scale, "shift": shift}

    return lower


def _bn_scale(raw, a):
    scale = raw["weight"] / np.sqrt(raw["running_var"] + a["eps"])
    return scale, raw["bias"] - raw["running_mean"] * scale


def _layer_scale(raw, a):
    scale = raw["weight"].reshape(-1)
    return scale, np.zeros_like(scale)


def _channels(index_of: Callable):
    def lower(step: Step, layer: Layer, a: dict):
        step.kernel = "channels"
        step.arrays["index"] = np.asarray(index_of(layer.inputs[0].shape[0], a), np.int32)

    return lower


def _shuffle_index(c: int, a: dict):
    """Output channel j of a shuffle of g groups reads input channel (j % g) * (C/g) + j // g."""
    g = a["g"]
    j = np.arange(c)
    return (j % g) * (c // g) + j // g


def _crop(step: Step, layer: Layer, a: dict):
    (_, h, w), (_, hr, wr) = layer.inputs[0].shape, layer.inputs[1].shape
    step.inputs = step.inputs[:1]
    step.attrs = dict(oy=(h - hr) // 2, ox=(w - wr) // 2)


def _concat(step: Step, layer: Layer, a: dict):
    """Each input's channels (features), for the backward's split of the gradient."""
    step.attrs = dict(a, widths=tuple(i.shape[0] for i in layer.inputs))


def _first_input_only(step: Step, layer: Layer, a: dict):
    """A reference tensor that contributes only its shape (resize's ``ref``)."""
    step.inputs = step.inputs[:1]
    step.attrs = dict(a)


def _pools(step: Step, layer: Layer, a: dict):
    step.attrs = dict(_windows(a), count_pad=a.get("count_pad", True))


def _with_epilogue(step: Step, layer: Layer, a: dict):
    step.attrs = dict(EPILOGUE)


def _convt(step: Step, layer: Layer, a: dict):
    step.attrs = dict(_windows(a), groups=a["g"], **EPILOGUE)


LOWERINGS: dict[str, Callable] = {
    "conv": _conv,
    "dwconv": _conv,
    "convt": _convt,
    "fc": _with_epilogue,
    "add": _with_epilogue,
    "mul": _with_epilogue,
    "maxpool": _pools,
    "avgpool": _pools,
    "bn": _affine(_bn_scale),
    "scale": _affine(_layer_scale),
    "crop": _crop,
    "concat": _concat,
    "resize": _first_input_only,
    "slice": _channels(lambda c, a: np.arange(a["start"], a["stop"])),
    "shuffle": _channels(_shuffle_index),
}

#: Ops that are the identity at inference: their value aliases their input's buffer.
ALIASES = ("identity", "dropout", "droppath")


def lower(layer: Layer, ins: list[int], weights) -> Step | None:
    """The step computing ``layer`` (None when it moves no data), weights still raw."""
    op = OPS[layer.op]
    if layer.op in ALIASES:
        return None
    if layer.op == "flatten":
        shape = layer.inputs[0].shape
        if len(shape) == 1 or shape[1:] == (1, 1):
            return None
    raw = (
        {}
        if weights is None
        else {k: weights[f"{layer.name}.{k}"] for k in (*layer.weights, *layer.buffers)}
    )
    step = Step(layer.op, [layer.name], list(ins), -1, raw=raw, macs=layer.macs)
    if isinstance(op, Activation) and op.code:
        step.kernel = "act"
        alpha, beta = op.act_params(layer.args)
        step.attrs = dict(act=op.code, alpha=alpha, beta=beta)
    elif layer.op in LOWERINGS:
        LOWERINGS[layer.op](step, layer, layer.args)
    else:
        step.attrs = dict(layer.args)
    return step


def _pack_conv(raw, a):
    w = raw["weight"]
    out, cg, kh, kw = w.shape
    g = a["groups"]
    packed = w.reshape(g, out // g, cg, kh, kw).transpose(0, 3, 4, 2, 1)
    return {"w": packed.reshape(g, kh * kw * cg, out // g), "b": raw.get("bias", np.zeros(out))}


def _pack_dwconv(raw, a):
    w = raw["weight"]
    return {"w": w[:, 0].transpose(1, 2, 0), "b": raw.get("bias", np.zeros(w.shape[0]))}


def _pack_convt(raw, a):
    w = raw["weight"]
    c_in, og, kh, kw = w.shape
    g = a["groups"]
    packed = w.reshape(g, c_in // g, og, kh, kw).transpose(0, 1, 3, 4, 2)
    return {"w": packed.reshape(g, c_in // g, kh * kw * og), "b": raw.get("bias", np.zeros(og * g))}


def _pack_fc(raw, a):
    w = raw["weight"]
    return {"w": w, "b": raw.get("bias", np.zeros(w.shape[0]))}


#: Weight layouts per kernel: ``conv`` (groups, kh*kw*C/g, out/g) rows (ky, kx, c); ``dwconv``
#: (kh, kw, C*m); ``convt`` (groups, C/g, kh*kw*out/g) columns (ky, kx, co); ``fc`` PyTorch's
#: (out, in); ``prelu`` its slopes as ``w``; others keep their names.
PACKERS: dict[str, Callable] = {
    "conv": _pack_conv,
    "dwconv": _pack_dwconv,
    "convt": _pack_convt,
    "fc": _pack_fc,
    "prelu": lambda raw, a: {"w": raw["weight"]},
}


def pack(step: Step):
    """Weights in the layouts the kernels read, float32, contiguous; raw ones dropped."""
    if step.raw:
        packed = PACKERS.get(step.kernel, lambda raw, a: raw)(step.raw, step.attrs)
        step.arrays.update({k: np.ascontiguousarray(v, np.float32) for k, v in packed.items()})
    step.raw = {}
