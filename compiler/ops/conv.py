"""Weighted ops: convolution, depthwise and transposed convolution, fully connected."""

from __future__ import annotations

from .base import (
    AXES,
    Arg,
    ArgError,
    Op,
    ShapeError,
    Windowed,
    _pad_word,
    _window_label,
    fmt_shape,
    register,
)
from .formula import Formula, per_axis, per_group, product, stated, window_rf


@register
class Conv(Windowed):
    name = "conv"
    family = "conv"
    example = "conv(64, k=3)"
    args = (
        Arg("out", "count"),
        Arg("k", "pair"),
        Arg("s", "pair", 1),
        Arg("p", "pad", 0),
        Arg("d", "pair", 1),
        Arg("g", "count", 1),
        Arg("bias", "bool", True),
    )

    def resolve(self, shapes, a):
        return dict(a, p=self._padding(a, a["k"], a["d"]), pad_word=_pad_word(a))

    def _channels(self, shape, a):
        return a["out"]

    def check(self, shapes, a, strict=False):
        self._check_rank(shapes)
        c = shapes[0][0]
        out, g = self._channels(shapes[0], a), a["g"]
        if c % g:
            raise ArgError(
                f"groups must divide the input channels, but {g} does not divide {c}", "g"
            )
        if out % g:
            raise ArgError(
                f"groups must divide the output channels, but {g} does not divide {out}", "g"
            )
        hw = self._out_size(shapes[0], a["k"], a["s"], a["p"], a["d"], False, strict)
        return (out, *hw)

    def weights(self, shapes, a):
        c = shapes[0][0]
        out = self._channels(shapes[0], a)
        w = {"weight": (out, c // a["g"], *a["k"])}
        if a["bias"]:
            w["bias"] = (out,)
        return w

    def macs(self, shapes, out, a):
        c = shapes[0][0]
        return out[0] * out[1] * out[2] * (c // a["g"]) * a["k"][0] * a["k"][1]

    def rf(self, rfs, shapes, a):
        extent = tuple(d * (k - 1) + 1 for k, d in zip(a["k"], a["d"]))
        return rfs[0].window(extent, a["s"])

    def label(self, a):
        return f"{self.name} {_window_label(a)}, {a['out']}"

    def explain_shape(self, shapes, out, a):
        return [self._explain_channels(shapes[0], a)] + self._explain_size(shapes[0], out, a)

    def _explain_channels(self, shape, a):
        return stated("C'", "out", a["out"], (0,))

    def explain_params(self, shapes, a):
        c, (kh, kw), g = shapes[0][0], a["k"], a["g"]
        out = self._channels(shapes[0], a)
        weight = Formula(
            "weight",
            "C' * C/g * kh * kw",
            product(out, per_group(c, g), kh, kw),
            out * (c // g) * kh * kw,
        )
        return [weight, _bias(out, a)]

    def explain_macs(self, shapes, out, a):
        c, (kh, kw), g = shapes[0][0], a["k"], a["g"]
        return [
            Formula(
                "MACs",
                "C' * H' * W' * C/g * kh * kw",
                product(*out, per_group(c, g), kh, kw),
                out[0] * out[1] * out[2] * (c // g) * kh * kw,
                note="one multiply-accumulate per weight per output position",
            )
        ]

    def explain_rf(self, rfs, shapes, a, rf):
        return self._explain_window_rf(rfs, a, rf)


@register
class DwConv(Conv):
    name = "dwconv"
    example = "dwconv(k=3)"
    args = (
        Arg("k", "pair"),
        Arg("s", "pair", 1),
        Arg("p", "pad", 0),
        Arg("d", "pair", 1),
        Arg("m", "count", 1),
        Arg("bias", "bool", True),
    )

    def resolve(self, shapes, a):
        c = shapes[0][0] if len(shapes[0]) == 3 else 1
        return dict(super().resolve(shapes, a), out=c * a["m"], g=c)

    def label(self, a):
        return f"dwconv {_window_label(dict(a, g=1))}" + (f", x{a['m']}" if a["m"] > 1 else "")

    def _explain_channels(self, shape, a):
        c = shape[0]
        return Formula("C'", "C * m", product(c, a["m"]), a["out"], (0,), "one group per channel")


@register
class ConvT(Windowed):
    name = "convt"
    example = "convt(64, k=2, s=2)"
    family = "resample"
    args = (
        Arg("out", "count"),
        Arg("k", "pair"),
        Arg("s", "pair", 1),
        Arg("p", "nonneg_pair", 0),
        Arg("op", "nonneg_pair", 0),
        Arg("d", "pair", 1),
        Arg("g", "count", 1),
        Arg("bias", "bool", True),
    )

    def check(self, shapes, a, strict=False):
        self._check_rank(shapes)
        c, h, w = shapes[0]
        g = a["g"]
        if c % g or a["out"] % g:
            bad = c if c % g else a["out"]
            side = "input" if c % g else "output"
            raise ArgError(
                f"groups must divide the {side} channels, but {g} does not divide {bad}", "g"
            )
        for o, s, d in zip(a["op"], a["s"], a["d"]):
            if o >= s and o >= d:
                raise ArgError(
                    f"output padding {o} must be smaller than the stride ({s}) or the dilation "
                    f"({d})",
                    "op",
                )
        sizes = []
        for n, k, s, p, o, d in zip((h, w), a["k"], a["s"], a["p"], a["op"], a["d"]):
            size = (n - 1) * s - 2 * p + d * (k - 1) + o + 1
            if size < 1:
                raise ShapeError(
                    f"convt output would be {size} pixels: ({n}-1)*{s} - 2*{p} + {d}*({k}-1) + "
                    f"{o} + 1 < 1",
                    "use less padding",
                )
            sizes.append(size)
        return (a["out"], *sizes)

    def weights(self, shapes, a):
        w = {"weight": (shapes[0][0], a["out"] // a["g"], *a["k"])}
        if a["bias"]:
            w["bias"] = (a["out"],)
        return w

    def macs(self, shapes, out, a):
        c, h, w = shapes[0]
        return c * h * w * (a["out"] // a["g"]) * a["k"][0] * a["k"][1]

    def rf(self, rfs, shapes, a):
        reach = tuple((d * (k - 1)) // s for k, s, d in zip(a["k"], a["s"], a["d"]))
        return rfs[0].upsampled(reach, a["s"])

    def label(self, a):
        return f"convt {_window_label(a)}, {a['out']}"

    def explain_shape(self, shapes, out, a):
        _, h, w = shapes[0]
        k, s, p, op, d = a["k"], a["s"], a["p"], a["op"], a["d"]
        return [stated("C'", "out", a["out"], (0,))] + per_axis(
            "H'",
            lambda i: f"({AXES[i]} - 1)*s - 2p + d(k-1) + op + 1",
            lambda i: f"({(h, w)[i]} - 1)*{s[i]} - 2*{p[i]} + {d[i]}*({k[i]}-1) + {op[i]} + 1",
            out[1:],
            1,
        )

    def explain_params(self, shapes, a):
        c, (kh, kw), g, out = shapes[0][0], a["k"], a["g"], a["out"]
        weight = Formula(
            "weight",
            "C * C'/g * kh * kw",
            product(c, per_group(out, g), kh, kw),
            c * (out // g) * kh * kw,
        )
        return [weight, _bias(out, a)]

    def explain_macs(self, shapes, out, a):
        c, h, w = shapes[0]
        (kh, kw), g = a["k"], a["g"]
        return [
            Formula(
                "MACs",
                "C * H * W * C'/g * kh * kw",
                product(c, h, w, per_group(a["out"], g), kh, kw),
                c * h * w * (a["out"] // g) * kh * kw,
                note="each input position scatters into a kh x kw patch of every output channel",
            )
        ]

    def explain_rf(self, rfs, shapes, a, rf):
        k, s, d = a["k"], a["s"], a["d"]
        reaches = [f"floor({d[i]}*({k[i]}-1) / {s[i]})" for i in (0, 1)]
        return window_rf(rfs[0], rf, "floor(d(k-1) / s)", reaches, "s", s, upsampling=True)


@register
class Fc(Op):
    name = "fc"
    family = "fc"
    example = "fc(10)"
    example_input = "30"
    args = (Arg("out", "count"), Arg("bias", "bool", True))

    def check(self, shapes, a, strict=False):
        if len(shapes[0]) != 1:
            raise ShapeError(
                f"fc needs a vector input, got {fmt_shape(shapes[0])}",
                "insert `flatten` before `fc` (or `gap` to pool each channel)",
            )
        return (a["out"],)

    def weights(self, shapes, a):
        w = {"weight": (a["out"], shapes[0][0])}
        if a["bias"]:
            w["bias"] = (a["out"],)
        return w

    def macs(self, shapes, out, a):
        return shapes[0][0] * a["out"]

    def initial(self, name, shape, a):
        if name == "bias":
            return ("const", 0.0)
        return ("xavier_uniform", shape[1], shape[0])

    def label(self, a):
        return f"fc {a['out']}"

    def explain_shape(self, shapes, out, a):
        return [stated("N'", "out", a["out"], (0,))]

    def explain_params(self, shapes, a):
        n, out = shapes[0][0], a["out"]
        return [Formula("weight", "N' * N", product(out, n), out * n), _bias(out, a)]

    def explain_macs(self, shapes, out, a):
        n = shapes[0][0]
        return [Formula("MACs", "N * N'", product(n, a["out"]), n * a["out"])]


def _bias(out: int, a) -> Formula:
    if a["bias"]:
        return stated("bias", "C'" if "k" in a else "N'", out)
    return Formula("bias", "0", "0", 0, note="bias=false")
