"""Ops that move data without arithmetic: flatten, crop, channel slice and shuffle, padding."""

from __future__ import annotations

from math import prod

from .base import AXES, Arg, ArgError, Op, ShapeError, fmt_shape, register
from .formula import Formula, per_axis, product, same_shape, stated, unchanged_rf
from .pool import GlobalPool, global_rf


@register
class Flatten(Op):
    name = "flatten"
    family = "shape"

    def check(self, shapes, a, strict=False):
        return (prod(shapes[0]),)

    def rf(self, rfs, shapes, a):
        if len(shapes[0]) == 1 or rfs[0] is None:
            return rfs[0]
        return GlobalPool.rf(self, rfs, shapes, a)

    def explain_shape(self, shapes, out, a):
        if len(shapes[0]) == 1:
            return [stated("N'", "N", out[0], (0,))]
        return [Formula("N'", "C * H * W", product(*shapes[0]), out[0], (0,))]

    def explain_rf(self, rfs, shapes, a, rf):
        if len(shapes[0]) == 1:
            return unchanged_rf(rf)
        return global_rf(rfs[0], shapes[0], rf)


@register
class Crop(Op):
    name = "crop"
    family = "shape"
    arity = 2
    ranks = (3,)
    example = "crop(x | maxpool(k=2))"

    def check(self, shapes, a, strict=False):
        self._check_rank(shapes)
        (c, h, w), (_, hr, wr) = shapes
        if hr > h or wr > w:
            raise ShapeError(
                f"crop cannot enlarge: {fmt_shape(shapes[0])} cropped to {hr}x{wr}",
                "swap the arguments: crop(larger, reference)",
            )
        return (c, hr, wr)

    def explain_shape(self, shapes, out, a):
        return [stated("C'", "C", out[0], (0,))] + per_axis(
            "H'",
            lambda i: f"the reference's {AXES[i]}",
            lambda i: str(out[1 + i]),
            out[1:],
            1,
            "the centre of the input",
        )


@register
class Slice(Op):
    """Channels ``start <= c < stop`` (ShuffleNetV2's split); features of a vector."""

    name = "slice"
    family = "shape"
    args = (Arg("start", "nonneg_int"), Arg("stop", "count"))
    example = "slice(1, 4)"

    def check(self, shapes, a, strict=False):
        c = shapes[0][0]
        if not a["start"] < a["stop"] <= c:
            raise ArgError(
                f"slice needs 0 <= start < stop <= {c} (the channels), got "
                f"start={a['start']}, stop={a['stop']}",
                "stop",
            )
        return (a["stop"] - a["start"], *shapes[0][1:])

    def explain_shape(self, shapes, out, a):
        vector = len(out) == 1
        size = Formula(
            "N'" if vector else "C'",
            "stop - start",
            f"{a['stop']} - {a['start']}",
            out[0],
            (0,),
        )
        if vector:
            return [size]
        return [size] + per_axis("H'", lambda i: AXES[i], lambda i: str(out[1 + i]), out[1:], 1)

    def label(self, a):
        return f"slice [{a['start']}:{a['stop']}]"


@register
class Shuffle(Op):
    """ShuffleNet's channel shuffle: view as (g, C/g), transpose, flatten."""

    name = "shuffle"
    family = "shape"
    ranks = (3,)
    args = (Arg("g", "count"),)
    example = "shuffle(3)"

    def check(self, shapes, a, strict=False):
        self._check_rank(shapes)
        if shapes[0][0] % a["g"]:
            raise ArgError(
                f"shuffle's groups must divide the channels, but {a['g']} does not "
                f"divide {shapes[0][0]}",
                "g",
            )
        return shapes[0]

    def explain_shape(self, shapes, out, a):
        c, g = shapes[0][0], a["g"]
        return [
            same_shape(out, note="the channels are reordered, not changed"),
            Formula("channels per group", "C / g", f"{c} / {g}", c // g),
        ]

    def label(self, a):
        return f"shuffle g{a['g']}"


@register
class Pad(Op):
    """Spatial padding: ``p`` as ``(top, bottom, left, right)`` after binding; ``reflect``
    mirrors without repeating the edge (PyTorch's), ``replicate`` repeats it."""

    name = "pad"
    family = "shape"
    ranks = (3,)
    args = (Arg("p", "padding"), Arg("mode", "pad_mode", "zeros"))
    example = "pad((1, 2, 0, 3), mode=reflect)"

    def check(self, shapes, a, strict=False):
        self._check_rank(shapes)
        c, h, w = shapes[0]
        top, bottom, left, right = a["p"]
        if a["mode"] == "reflect" and (max(top, bottom) >= h or max(left, right) >= w):
            raise ArgError(
                f"reflect padding must be smaller than the input ({h}x{w}), got {a['p']}",
                "p",
                "use mode=replicate or less padding",
            )
        return (c, h + top + bottom, w + left + right)

    def explain_shape(self, shapes, out, a):
        _, h, w = shapes[0]
        top, bottom, left, right = a["p"]
        return [stated("C'", "C", out[0], (0,))] + [
            Formula("H'", "H + top + bottom", f"{h} + {top} + {bottom}", out[1], (1,)),
            Formula("W'", "W + left + right", f"{w} + {left} + {right}", out[2], (2,)),
        ]

    def rf(self, rfs, shapes, a):
        return rfs[0]

    def explain_rf(self, rfs, shapes, a, rf):
        return unchanged_rf(rf, "padding adds positions but widens no field")

    def label(self, a):
        t, b, left, r = a["p"]
        amount = f"{t}" if t == b == left == r else f"{t},{b},{left},{r}"
        return f"pad {amount}" + ("" if a["mode"] == "zeros" else f" {a['mode']}")
