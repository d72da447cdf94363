"""Ops that merge tensors: concatenation, sum and product."""

from __future__ import annotations

from .base import RF, Op, ShapeError, fmt_shape, register


class _Merge(Op):
    family = "merge"
    arity = None

    def rf(self, rfs, shapes, a):
        return RF.merge(rfs)


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

    def rf(self, rfs, shapes, a):
        """The largest field, but the jump of the full-size operands: a broadcast gate has
        one position, so its jump says nothing about the output's grid."""
        full = [
            r
            for r, s in zip(rfs, shapes)
            if s == max(shapes, key=len)
            and (len(s) < 3 or s[1:] != (1, 1) or all(x[1:] == (1, 1) for x in shapes))
        ]
        merged = RF.merge(rfs)
        return RF(merged.size, RF.merge(full or rfs).jump)
