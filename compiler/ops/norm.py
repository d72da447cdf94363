"""Normalisations and per-channel affine ops: batch norm, LRN, layer norm, group norm, scale."""

from __future__ import annotations

from .base import Arg, ArgError, Op, register
from .formula import Formula, product, same_shape, stated


class _Normalisation(Op):
    family = "norm"

    def resolve(self, shapes, a):
        if a["eps"] <= 0:
            raise ArgError(f"{self.name} 'eps' must be positive, got {a['eps']:g}", "eps")
        return a

    def weights(self, shapes, a):
        c = shapes[0][0]
        return {"weight": (c,), "bias": (c,)}

    def explain_params(self, shapes, a):
        c = shapes[0][0]
        return [
            stated("weight", "C", c, note="a learned scale (gamma) per channel"),
            stated("bias", "C", c, note="a learned shift (beta) per channel"),
        ]

    def initial(self, name, shape, a):
        return ("const", 1.0 if name in ("weight", "running_var") else 0.0)


@register
class BatchNorm(_Normalisation):
    name = "bn"
    args = (Arg("eps", "number", 1e-5),)

    def buffers(self, shapes, a):
        c = shapes[0][0]
        return {"running_mean": (c,), "running_var": (c,)}


@register
class LayerNorm(_Normalisation):
    """Over the channels at each position (ConvNeXt's LayerNorm2d), over the features of a
    vector."""

    name = "layernorm"
    args = (Arg("eps", "number", 1e-6),)


@register
class GroupNorm(_Normalisation):
    name = "groupnorm"
    ranks = (3,)
    args = (Arg("groups", "count"), Arg("eps", "number", 1e-5))
    example = "groupnorm(3)"

    def check(self, shapes, a, strict=False):
        self._check_rank(shapes)
        c = shapes[0][0]
        if c % a["groups"]:
            raise ArgError(
                f"groups must divide the channels, but {a['groups']} does not divide {c}", "groups"
            )
        return shapes[0]

    def explain_shape(self, shapes, out, a):
        c, groups = shapes[0][0], a["groups"]
        return [
            same_shape(out),
            Formula("channels per group", "C / groups", f"{c} / {groups}", c // groups),
        ]

    def label(self, a):
        return f"groupnorm {a['groups']}"


@register
class Scale(Op):
    """A learned multiplier per channel (ConvNeXt's layer scale): weight (C, 1, 1), or (C,)
    on a vector."""

    name = "scale"
    family = "norm"
    args = (Arg("init", "number", 1.0),)
    example = "scale(0.5)"

    def weights(self, shapes, a):
        c = shapes[0][0]
        return {"weight": (c, 1, 1) if len(shapes[0]) == 3 else (c,)}

    def explain_params(self, shapes, a):
        c = shapes[0][0]
        text = product(c, 1, 1) if len(shapes[0]) == 3 else str(c)
        return [Formula("weight", "C", text, c, note="one multiplier per channel")]

    def initial(self, name, shape, a):
        return ("const", a["init"])


@register
class Lrn(Op):
    name = "lrn"
    family = "norm"
    ranks = (3,)
    args = (
        Arg("size", "count", 5),
        Arg("alpha", "number", 1e-4),
        Arg("beta", "number", 0.75),
        Arg("k", "number", 1.0),
    )
    example = "lrn(size=3, k=2)"

    def label(self, a):
        return f"lrn {a['size']}"
