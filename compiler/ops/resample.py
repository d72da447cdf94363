"""Resampling: integer-factor upsampling and resizing to a size or to another tensor's size.

Both follow ``torch.nn.functional.interpolate``: ``nearest`` takes ``floor(dst * in / out)``,
``bilinear`` is ``align_corners=False`` (source ``(dst + 0.5) * in / out - 0.5``, clamped).
"""

from __future__ import annotations

from fractions import Fraction

from .base import AXES, RF, Arg, ArgError, Op, _fmt_pair, register
from .formula import num, per_axis, stated, window_rf


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

    def explain_shape(self, shapes, out, a):
        _, h, w = shapes[0]
        scale = a["scale"]
        return [stated("C'", "C", out[0], (0,))] + per_axis(
            "H'",
            lambda i: f"{AXES[i]} * scale",
            lambda i: f"{(h, w)[i]} * {scale[i]}",
            out[1:],
            1,
        )

    def explain_rf(self, rfs, shapes, a, rf):
        bilinear = a["mode"] == "bilinear"
        return window_rf(
            rfs[0],
            rf,
            "1" if bilinear else "0",
            ["1" if bilinear else "0"] * 2,
            "scale",
            a["scale"],
            upsampling=True,
        )

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

    def explain_shape(self, shapes, out, a):
        source = "the reference's H" if len(shapes) == 2 else "size"
        return [stated("C'", "C", out[0], (0,))] + per_axis(
            "H'", lambda i: source.replace("H", AXES[i]), lambda i: str(out[1 + i]), out[1:], 1
        )

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

    def explain_rf(self, rfs, shapes, a, rf):
        _, h, w = shapes[0]
        out = shapes[1][1:] if len(shapes) == 2 else a["size"]
        bilinear = a["mode"] == "bilinear"
        rf_in = rfs[0]
        reach = [1 if bilinear and n > 1 else 0 for n in (h, w)]

        def size(i):
            text = f"{num(rf_in.size[i])} + {reach[i]} * {num(rf_in.jump[i])}"
            return text if rf_in.jump[i].denominator == 1 else f"floor({text})"

        return per_axis(
            "r",
            lambda i: "r_in + j_in" if reach[i] else "r_in",
            size,
            rf.size,
            0,
            "bilinear reads one more input step" if bilinear else "nearest reads one position",
        ) + per_axis(
            "j",
            lambda i: f"j_in * {AXES[i]} / {AXES[i]}'",
            lambda i: f"{num(rf_in.jump[i])} * {(h, w)[i]} / {out[i]}",
            rf.jump,
            0,
        )

    def label(self, a):
        size = "" if a["size"] is None else f" {_fmt_pair(a['size'])}"
        return f"resize{size}" + (" nearest" if a["mode"] == "nearest" else "")
