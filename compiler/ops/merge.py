"""Ops that merge tensors: concatenation, sum and product."""

from __future__ import annotations

from .base import RF, Op, ShapeError, fmt_shape, register
from .formula import Formula, num, per_axis, same_shape


class _Merge(Op):
    family = "merge"
    arity = None

    def rf(self, rfs, shapes, a):
        return RF.merge(rfs)

    def explain_rf(self, rfs, shapes, a, rf):
        return merged_rf(rfs, rf, rfs)


def _largest(values) -> str:
    return num(values[0]) if len(values) == 1 else f"max({', '.join(num(v) for v in values)})"


def merged_rf(rfs, rf, jumps_of, note: str = "") -> list[Formula]:
    """The largest field over the paths; the jump the largest of ``jumps_of``."""
    return per_axis(
        "r",
        lambda i: "max(r_in of each input)",
        lambda i: _largest([r.size[i] for r in rfs]),
        rf.size,
        0,
    ) + per_axis(
        "j",
        lambda i: (
            "max(j_in of each input)" if jumps_of is rfs else "max(j_in of the full-size inputs)"
        ),
        lambda i: _largest([r.jump[i] for r in jumps_of]),
        rf.jump,
        0,
        note,
    )


@register
class Concat(_Merge):
    name = "concat"
    example = "concat(x)"

    def check(self, shapes, a, strict=False):
        ranks = {len(s) for s in shapes}
        if len(ranks) > 1:
            raise ShapeError(
                "concat mixes vectors and feature maps: " + ", ".join(fmt_shape(s) for s in shapes),
                "flatten the feature maps first",
            )
        if ranks == {3}:
            spatial = {s[1:] for s in shapes}
            if len(spatial) > 1:
                raise ShapeError(
                    "concat needs equal H and W, got " + ", ".join(fmt_shape(s) for s in shapes),
                    "crop(a, ref) or upsample/pool to a common size first",
                )
            return (sum(s[0] for s in shapes), *shapes[0][1:])
        return (sum(s[0] for s in shapes),)

    def explain_shape(self, shapes, out, a):
        vector = len(out) == 1
        channels = Formula(
            "N'" if vector else "C'",
            "N_1 + N_2 + ..." if vector else "C_1 + C_2 + ...",
            " + ".join(str(s[0]) for s in shapes),
            out[0],
            (0,),
        )
        if vector:
            return [channels]
        return [channels] + per_axis(
            "H'", lambda i: "H (equal in every input)", lambda i: str(out[1 + i]), out[1:], 1
        )


@register
class Add(_Merge):
    name = "add"
    example = "add(x)"

    def check(self, shapes, a, strict=False):
        if len(shapes) < 2:
            raise ShapeError("add needs at least two tensors")
        if len(set(shapes)) > 1:
            hint = None
            if len(shapes) == 2 and len(shapes[0]) == 3 and len(shapes[1]) == 3:
                hint = (
                    "project the shortcut with conv(C, k=1, s=S) so channels and size match"
                    if shapes[0] != shapes[1]
                    else None
                )
            raise ShapeError(
                "add needs identical shapes, got " + " and ".join(fmt_shape(s) for s in shapes),
                hint,
            )
        return shapes[0]

    def explain_shape(self, shapes, out, a):
        return [same_shape(out, "the inputs' shape (add needs identical shapes)")]


@register
class Mul(_Merge):
    """Elementwise product; a ``Cx1x1`` (or ``1x1x1``) operand broadcasts over ``CxHxW``
    (squeeze-and-excitation)."""

    name = "mul"
    example = "mul(x | gap | sigmoid)"

    def check(self, shapes, a, strict=False):
        if len(shapes) < 2:
            raise ShapeError("mul needs at least two tensors")
        full = max(shapes, key=lambda s: (len(s), s[1:] if len(s) == 3 else 0))
        for s in shapes:
            if s == full:
                continue
            if len(s) == len(full) == 3 and s[1:] == (1, 1) and s[0] in (1, full[0]):
                continue
            raise ShapeError(
                "mul needs identical shapes or a Cx1x1 / 1x1x1 operand that broadcasts, got "
                + " and ".join(fmt_shape(x) for x in shapes),
                "pool the gate to Cx1x1 (gap) for squeeze-and-excitation",
            )
        return full

    def explain_shape(self, shapes, out, a):
        gated = any(s != out for s in shapes)
        return [
            same_shape(
                out,
                "the full-size input's shape",
                "a Cx1x1 (or 1x1x1) input broadcasts over H and W" if gated else "",
            )
        ]

    def rf(self, rfs, shapes, a):
        """The largest field, but the jump of the full-size operands: a broadcast gate has
        one position, so its jump says nothing about the output's grid."""
        merged = RF.merge(rfs)
        return RF(merged.size, RF.merge(self._full_size(rfs, shapes) or rfs).jump)

    @staticmethod
    def _full_size(rfs, shapes):
        """The fields of the operands that are not broadcast."""
        return [
            r
            for r, s in zip(rfs, shapes)
            if s == max(shapes, key=len)
            and (len(s) < 3 or s[1:] != (1, 1) or all(x[1:] == (1, 1) for x in shapes))
        ]

    def explain_rf(self, rfs, shapes, a, rf):
        full = self._full_size(rfs, shapes)
        return merged_rf(rfs, rf, full or rfs, "a broadcast gate has one position: no grid")
