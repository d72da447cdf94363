"""Resampling: integer-factor upsampling and resizing to a size or to another tensor's size.

Both follow ``torch.nn.functional.interpolate``: ``nearest`` takes ``floor(dst * in / out)``,
``bilinear`` is ``align_corners=False`` (source ``(dst + 0.5) * in / out - 0.5``, clamped).
"""

from __future__ import annotations

from fractions import Fraction

from .base import RF, Arg, ArgError, Op, _fmt_pair, register


@register
class Upsample(Op):
    name = "upsample"
    family = "resample"
    ranks = (3,)
    args = (Arg("scale", "pair", 2), Arg("mode", "mode", "nearest"))
    example = "upsample((2, 3), mode=bilinear)"

    def check(self, shapes, a, strict=False):
        self._check_rank(shapes)
        c, h, w = shapes[0]
        return (c, h * a["scale"][0], w * a["scale"][1])

    def rf(self, rfs, shapes, a):
        reach = (1, 1) if a["mode"] == "bilinear" else (0, 0)
        return rfs[0].upsampled(reach, a["scale"])

    def label(self, a):
        return f"upsample x{_fmt_pair(a['scale'])}" + (
            " bilinear" if a["mode"] == "bilinear" else ""
        )


@register
class Resize(Op):
    """``resize(a, ref)`` to ``ref``'s H and W, or ``resize(a, size=(h, w))``."""

    name = "resize"
    family = "resample"
    ranks = (3,)
    optional_tensors = 1
    args = (Arg("size", "pair", None), Arg("mode", "mode", "bilinear"))
    example = "resize(size=(9, 4))"

    def check(self, shapes, a, strict=False):
        self._check_rank(shapes)
        if len(shapes) == 2 and a["size"] is not None:
            raise ArgError("resize takes a reference tensor or size=(h, w), not both", "size")
        if len(shapes) == 1 and a["size"] is None:
            raise ArgError(
                "resize needs a reference tensor or size=(h, w)",
                None,
                "e.g. resize(x, ref) or resize(size=(56, 56))",
            )
        h, w = shapes[1][1:] if len(shapes) == 2 else a["size"]
        return (shapes[0][0], h, w)

    def rf(self, rfs, shapes, a):
        """Bilinear reads one more input step per axis (none from a 1-pixel input); each
        output step moves in/out input steps."""
        _, h, w = shapes[0]
        out = shapes[1][1:] if len(shapes) == 2 else a["size"]
        bilinear = a["mode"] == "bilinear"
        size = tuple(
            int(r + (j if bilinear and n > 1 else 0))
            for r, j, n in zip(rfs[0].size, rfs[0].jump, (h, w))
        )
        return RF(size, tuple(j * Fraction(n, o) for j, n, o in zip(rfs[0].jump, (h, w), out)))

    def label(self, a):
        size = "" if a["size"] is None else f" {_fmt_pair(a['size'])}"
        return f"resize{size}" + (" nearest" if a["mode"] == "nearest" else "")
