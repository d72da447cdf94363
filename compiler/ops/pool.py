"""Pooling: windowed (max, average), global, and adaptive average pooling."""

from __future__ import annotations

from .base import Arg, ArgError, Op, Windowed, _fmt_pair, _pad_word, _window_label, register
from .formula import per_axis, stated, window_rf


@register
class MaxPool(Windowed):
    name = "maxpool"
    example = "maxpool(k=2)"
    family = "pool"
    args = (
        Arg("k", "pair"),
        Arg("s", "pair", None),
        Arg("p", "pad", 0),
        Arg("d", "pair", 1),
        Arg("ceil", "bool", False),
    )

    def resolve(self, shapes, a):
        a = dict(a, s=a["s"] or a["k"], d=a.get("d", (1, 1)), pad_word=_pad_word(a))
        return dict(a, p=self._padding(a, a["k"], a["d"]))

    def check(self, shapes, a, strict=False):
        self._check_rank(shapes)
        for k, p in zip(a["k"], a["p"]):
            if p > k // 2:  # PyTorch's rule, so that no window lies entirely in the padding
                raise ArgError(
                    f"padding {p} is more than half the kernel size {k}", "p", f"use p <= {k // 2}"
                )
        return (
            shapes[0][0],
            *self._out_size(shapes[0], a["k"], a["s"], a["p"], a["d"], a["ceil"], strict),
        )

    def rf(self, rfs, shapes, a):
        extent = tuple(d * (k - 1) + 1 for k, d in zip(a["k"], a["d"]))
        return rfs[0].window(extent, a["s"])

    def label(self, a):
        return f"{self.name} {_window_label(a)}" + (" ceil" if a["ceil"] else "")

    def explain_shape(self, shapes, out, a):
        return [stated("C'", "C", out[0], (0,))] + self._explain_size(shapes[0], out, a, a["ceil"])

    def explain_rf(self, rfs, shapes, a, rf):
        return self._explain_window_rf(rfs, a, rf)


@register
class AvgPool(MaxPool):
    name = "avgpool"
    example = "avgpool(k=2)"
    args = (
        Arg("k", "pair"),
        Arg("s", "pair", None),
        Arg("p", "pad", 0),
        Arg("ceil", "bool", False),
        Arg("count_pad", "bool", True),
    )


class GlobalPool(Op):
    family = "pool"
    ranks = (3,)

    def check(self, shapes, a, strict=False):
        self._check_rank(shapes)
        return (shapes[0][0], 1, 1)

    def rf(self, rfs, shapes, a):
        _, h, w = shapes[0]
        return rfs[0].window((h, w), (h, w))

    def explain_shape(self, shapes, out, a):
        return [stated("C'", "C", out[0], (0,))] + per_axis(
            "H'", lambda i: "1", lambda i: "1", (1, 1), 1, "one value per channel"
        )

    def explain_rf(self, rfs, shapes, a, rf):
        return global_rf(rfs[0], shapes[0], rf)


def global_rf(rf_in, shape, rf):
    """A window over the whole map: it reaches H-1 steps, and the next one is H away."""
    _, h, w = shape
    return window_rf(rf_in, rf, "({N} - 1)", [f"({h} - 1)", f"({w} - 1)"], "{N}", (h, w))


@register
class Gap(GlobalPool):
    name = "gap"


@register
class Gmp(GlobalPool):
    name = "gmp"


@register
class AdaptiveAvgPool(Op):
    """PyTorch's adaptive average pooling: output cell i spans input rows
    ``floor(i*H/h) <= y < ceil((i+1)*H/h)`` (and the same for columns)."""

    name = "adaptive_avgpool"
    family = "pool"
    ranks = (3,)
    args = (Arg("size", "pair"),)
    example = "adaptive_avgpool((2, 3))"

    def check(self, shapes, a, strict=False):
        self._check_rank(shapes)
        return (shapes[0][0], *a["size"])

    def rf(self, rfs, shapes, a):
        _, h, w = shapes[0]
        window = tuple(-(-n // s) + (1 if n % s else 0) for n, s in zip((h, w), a["size"]))
        return rfs[0].window(window, tuple(max(1, n // s) for n, s in zip((h, w), a["size"])))

    def label(self, a):
        return f"adaptive_avgpool {_fmt_pair(a['size'])}"

    def explain_shape(self, shapes, out, a):
        size = a["size"]
        return [stated("C'", "C", out[0], (0,))] + per_axis(
            "H'", lambda i: "size", lambda i: str(size[i]), size, 1
        )

    def explain_rf(self, rfs, shapes, a, rf):
        """A cell spans at most ceil(H/h') input rows, one more when h' does not divide H
        (the windows overlap); the cells start floor(H/h') rows apart."""
        _, h, w = shapes[0]
        size = a["size"]
        reaches = [f"(ceil({n}/{o}) + {1 if n % o else 0} - 1)" for n, o in zip((h, w), size)]
        strides = [f"max(1, floor({n}/{o}))" for n, o in zip((h, w), size)]
        return window_rf(
            rfs[0],
            rf,
            "(ceil({N}/{N}') + [{N}/{N}' not whole] - 1)",
            reaches,
            "max(1, floor({N}/{N}'))",
            strides,
        )
