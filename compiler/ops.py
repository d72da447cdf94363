"""The built-in ops: one registry entry per op holding its pure rules.

Each :class:`Op` knows its arguments (with defaults and types), how many tensors it takes, its
output-shape rule, its weights (PyTorch layouts), its MACs and how it transforms the receptive
field. Shapes are tuples without the batch: ``(C, H, W)`` or ``(N,)``. Nothing here imports
Numba or NumPy; the runtimes register kernels under the same op names.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from math import prod

REQUIRED = object()

#: Words that stand for themselves as argument values.
WORDS = ("same", "valid", "nearest", "bilinear")


class ArgError(Exception):
    """A bad argument value; ``arg`` names the argument so the caret can point at it."""

    def __init__(self, message: str, arg: str | None = None, hint: str | None = None):
        super().__init__(message)
        self.arg, self.hint = arg, hint


class ShapeError(Exception):
    """An op cannot accept these input shapes (message names both sides)."""

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.hint = hint


def fmt_shape(shape) -> str:
    return "x".join(str(d) for d in shape)


def _pair(v):
    return v if isinstance(v, tuple) else (v, v)


def _fmt_pair(p) -> str:
    return f"{p[0]}" if p[0] == p[1] else f"{p[0]}x{p[1]}"


# ---- argument kinds: each checks and normalises one value ----------------------------------

def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _positive_int(name, v):
    if not _is_int(v) or v < 1:
        raise ArgError(f"'{name}' must be a positive integer, got {_show(v)}", name)
    return v


def _pair_of(name, v, minimum, what):
    if _is_int(v):
        v = (v, v)
    if not (isinstance(v, tuple) and len(v) == 2 and all(_is_int(x) for x in v)):
        raise ArgError(f"'{name}' must be {what} or an (h, w) pair of them, got {_show(v)}", name)
    if min(v) < minimum:
        raise ArgError(f"'{name}' must be {what}, got {_show(v)}", name)
    return v


def _kind_count(name, v):
    return _positive_int(name, v)


def _kind_pair(name, v):
    return _pair_of(name, v, 1, "a positive integer")


def _kind_pad(name, v):
    if v in ("same", "valid"):
        return v
    return _pair_of(name, v, 0, "a non-negative integer, 'same' or 'valid'")


def _kind_nonneg_pair(name, v):
    return _pair_of(name, v, 0, "a non-negative integer")


def _kind_number(name, v):
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise ArgError(f"'{name}' must be a number, got {_show(v)}", name)
    return float(v)


def _kind_bool(name, v):
    if not isinstance(v, bool):
        raise ArgError(f"'{name}' must be true or false, got {_show(v)}", name)
    return v


def _kind_mode(name, v):
    if v not in ("nearest", "bilinear"):
        raise ArgError(f"'{name}' must be nearest or bilinear, got {_show(v)}", name)
    return v


KINDS = {
    "count": _kind_count, "pair": _kind_pair, "pad": _kind_pad, "nonneg_pair": _kind_nonneg_pair,
    "number": _kind_number, "bool": _kind_bool, "mode": _kind_mode,
}


def _show(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, tuple):
        return "(" + ", ".join(_show(x) for x in v) + ")"
    if isinstance(v, (int, float, str)):
        return str(v)
    return getattr(v, "describe", lambda: type(v).__name__)()


@dataclass(frozen=True)
class Arg:
    name: str
    kind: str
    default: object = REQUIRED


# ---- receptive field ----------------------------------------------------------------------

@dataclass(frozen=True)
class RF:
    """Receptive field of one output position on the network input: size and jump per axis."""

    size: tuple[int, int]
    jump: tuple[Fraction, Fraction]

    @staticmethod
    def unit() -> RF:
        return RF((1, 1), (Fraction(1), Fraction(1)))

    def window(self, extent, stride) -> RF:
        """After a sliding window of ``extent`` (dilated kernel) and ``stride``."""
        size = tuple(int(r + (e - 1) * j) for r, e, j in zip(self.size, extent, self.jump))
        return RF(size, tuple(j * s for j, s in zip(self.jump, stride)))

    def upsampled(self, reach, scale) -> RF:
        """After an upsampling that reads ``reach`` extra input steps per output."""
        size = tuple(int(r + e * j) for r, e, j in zip(self.size, reach, self.jump))
        return RF(size, tuple(j / s for j, s in zip(self.jump, scale)))

    @staticmethod
    def merge(rfs) -> RF:
        """The largest field over all paths (concat, add)."""
        return RF(tuple(max(r.size[i] for r in rfs) for i in (0, 1)),
                  tuple(max(r.jump[i] for r in rfs) for i in (0, 1)))


# ---- ops ----------------------------------------------------------------------------------

class Op:
    """Base: a shape-preserving op of one tensor, no weights, no MACs."""

    name = ""
    family = "activation"
    args: tuple[Arg, ...] = ()
    arity = 1  # number of tensors; None means one or more
    ranks = (1, 3)

    def check(self, shapes, a, strict=False):
        """Return the output shape or raise :class:`ShapeError`."""
        self._check_rank(shapes)
        return shapes[0]

    def resolve(self, shapes, a):
        """Arguments after shape-dependent defaults (e.g. ``p=same``) are filled in."""
        return a

    def weights(self, shapes, a) -> dict:
        """Learned parameters: name -> shape (PyTorch layout)."""
        return {}

    def buffers(self, shapes, a) -> dict:
        """Non-learned state stored with the weights (running statistics)."""
        return {}

    def macs(self, shapes, out, a) -> int:
        return 0

    def rf(self, rfs, shapes, a):
        return rfs[0]

    def label(self, a) -> str:
        return self.name

    def _check_rank(self, shapes):
        for s in shapes:
            if len(s) not in self.ranks:
                if self.ranks == (3,):
                    raise ShapeError(
                        f"{self.name} needs a CxHxW input, got a vector of {s[0]}",
                        "this op works on feature maps; vectors come after 'flatten'")
                raise ShapeError(f"{self.name} got an input of shape {fmt_shape(s)}")


class Activation(Op):
    family = "activation"


class LeakyRelu(Activation):
    name = "leaky_relu"
    args = (Arg("a", "number", 0.01),)

    def label(self, a):
        return f"leaky_relu {a['a']:g}"


class Softmax(Activation):
    name = "softmax"


class Identity(Op):
    name = "identity"
    family = "shape"


class Dropout(Op):
    name = "dropout"
    family = "shape"
    args = (Arg("p", "number", 0.5),)

    def resolve(self, shapes, a):
        if not 0.0 <= a["p"] < 1.0:
            raise ArgError(f"dropout 'p' must be in [0, 1), got {a['p']:g}", "p")
        return a

    def label(self, a):
        return f"dropout {a['p']:g}"


class _Windowed(Op):
    """Shared rule of sliding-window ops (conv, pooling): padding, extent, output size."""

    ranks = (3,)

    def _padding(self, a, k, d):
        p = a.get("p", (0, 0))
        if p == "valid":
            return (0, 0)
        if p == "same":
            pads = []
            for kk, dd in zip(k, d):
                if dd * (kk - 1) % 2:
                    raise ArgError(
                        f"p=same needs d*(k-1) to be even, but the kernel {kk} (dilation {dd}) "
                        f"would need {dd * (kk - 1)}/2 pixels of padding on each side", "p",
                        "use an odd kernel size or give the padding explicitly")
                pads.append(dd * (kk - 1) // 2)
            return tuple(pads)
        return p

    def _out_size(self, shape, k, s, p, d, ceil_mode, strict):
        _, h, w = shape
        sizes = []
        for size, kk, ss, pp, dd in zip((h, w), k, s, p, d):
            extent = dd * (kk - 1) + 1
            span = size + 2 * pp - extent
            out = (-(-span // ss) if ceil_mode else span // ss) + 1
            if ceil_mode and (out - 1) * ss >= size + pp:
                out -= 1  # the last window must start inside the input or left padding
            if out < 1:
                raise ShapeError(
                    f"{self.name} window {_fmt_pair(k)}"
                    + (f" (dilated to {extent})" if dd > 1 else "")
                    + f" does not fit the input {fmt_shape(shape)} padded by {pp}: "
                    f"{size} + 2*{pp} < {extent}",
                    "pad the input, use a smaller kernel, or pool less before this layer")
            if strict and span % ss:
                raise ShapeError(
                    f"stride {ss} does not tile the input: ({size} + 2*{pp} - {extent})/{ss} + 1"
                    f" = {span / ss + 1:g} is not a whole number (--strict)",
                    "change padding or stride so that (N + 2P - F) is a multiple of S")
            sizes.append(out)
        return tuple(sizes)


class Conv(_Windowed):
    name = "conv"
    family = "conv"
    args = (Arg("out", "count"), Arg("k", "pair"), Arg("s", "pair", 1), Arg("p", "pad", 0),
            Arg("d", "pair", 1), Arg("g", "count", 1), Arg("bias", "bool", True))

    def resolve(self, shapes, a):
        return dict(a, p=self._padding(a, a["k"], a["d"]), pad_word=_pad_word(a))

    def _channels(self, shape, a):
        return a["out"]

    def check(self, shapes, a, strict=False):
        self._check_rank(shapes)
        c = shapes[0][0]
        out, g = self._channels(shapes[0], a), a["g"]
        if c % g:
            raise ArgError(f"groups must divide the input channels, but {g} does not divide {c}",
                           "g")
        if out % g:
            raise ArgError(
                f"groups must divide the output channels, but {g} does not divide {out}", "g")
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


class DwConv(Conv):
    name = "dwconv"
    args = (Arg("k", "pair"), Arg("s", "pair", 1), Arg("p", "pad", 0), Arg("d", "pair", 1),
            Arg("m", "count", 1), Arg("bias", "bool", True))

    def resolve(self, shapes, a):
        c = shapes[0][0] if len(shapes[0]) == 3 else 1
        return dict(super().resolve(shapes, a), out=c * a["m"], g=c)

    def label(self, a):
        return f"dwconv {_window_label(dict(a, g=1))}" + (f", x{a['m']}" if a["m"] > 1 else "")


class ConvT(_Windowed):
    name = "convt"
    family = "resample"
    args = (Arg("out", "count"), Arg("k", "pair"), Arg("s", "pair", 1), Arg("p", "nonneg_pair", 0),
            Arg("op", "nonneg_pair", 0), Arg("d", "pair", 1), Arg("g", "count", 1),
            Arg("bias", "bool", True))

    def check(self, shapes, a, strict=False):
        self._check_rank(shapes)
        c, h, w = shapes[0]
        g = a["g"]
        if c % g or a["out"] % g:
            bad = c if c % g else a["out"]
            side = "input" if c % g else "output"
            raise ArgError(
                f"groups must divide the {side} channels, but {g} does not divide {bad}", "g")
        for o, s, d in zip(a["op"], a["s"], a["d"]):
            if o >= s and o >= d:
                raise ArgError(
                    f"output padding {o} must be smaller than the stride ({s}) or the dilation "
                    f"({d})", "op")
        sizes = []
        for n, k, s, p, o, d in zip((h, w), a["k"], a["s"], a["p"], a["op"], a["d"]):
            size = (n - 1) * s - 2 * p + d * (k - 1) + o + 1
            if size < 1:
                raise ShapeError(
                    f"convt output would be {size} pixels: ({n}-1)*{s} - 2*{p} + {d}*({k}-1) + "
                    f"{o} + 1 < 1", "use less padding")
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


class MaxPool(_Windowed):
    name = "maxpool"
    family = "pool"
    args = (Arg("k", "pair"), Arg("s", "pair", None), Arg("p", "pad", 0), Arg("d", "pair", 1),
            Arg("ceil", "bool", False))

    def resolve(self, shapes, a):
        a = dict(a, s=a["s"] or a["k"], d=a.get("d", (1, 1)), pad_word=_pad_word(a))
        return dict(a, p=self._padding(a, a["k"], a["d"]))

    def check(self, shapes, a, strict=False):
        self._check_rank(shapes)
        for k, p in zip(a["k"], a["p"]):
            if p > k // 2:  # PyTorch's rule, so that no window lies entirely in the padding
                raise ArgError(f"padding {p} is more than half the kernel size {k}", "p",
                               f"use p <= {k // 2}")
        return (shapes[0][0], *self._out_size(shapes[0], a["k"], a["s"], a["p"], a["d"],
                                              a["ceil"], strict))

    def rf(self, rfs, shapes, a):
        extent = tuple(d * (k - 1) + 1 for k, d in zip(a["k"], a["d"]))
        return rfs[0].window(extent, a["s"])

    def label(self, a):
        return f"{self.name} {_window_label(a)}" + (" ceil" if a["ceil"] else "")


class AvgPool(MaxPool):
    name = "avgpool"
    args = (Arg("k", "pair"), Arg("s", "pair", None), Arg("p", "pad", 0),
            Arg("ceil", "bool", False), Arg("count_pad", "bool", True))


class GlobalPool(Op):
    family = "pool"
    ranks = (3,)

    def check(self, shapes, a, strict=False):
        self._check_rank(shapes)
        return (shapes[0][0], 1, 1)

    def rf(self, rfs, shapes, a):
        _, h, w = shapes[0]
        return rfs[0].window((h, w), (h, w))


class Gap(GlobalPool):
    name = "gap"


class Gmp(GlobalPool):
    name = "gmp"


class Fc(Op):
    name = "fc"
    family = "fc"
    args = (Arg("out", "count"), Arg("bias", "bool", True))

    def check(self, shapes, a, strict=False):
        if len(shapes[0]) != 1:
            raise ShapeError(f"fc needs a vector input, got {fmt_shape(shapes[0])}",
                             "insert `flatten` before `fc` (or `gap` to pool each channel)")
        return (a["out"],)

    def weights(self, shapes, a):
        w = {"weight": (a["out"], shapes[0][0])}
        if a["bias"]:
            w["bias"] = (a["out"],)
        return w

    def macs(self, shapes, out, a):
        return shapes[0][0] * a["out"]

    def label(self, a):
        return f"fc {a['out']}"


class Flatten(Op):
    name = "flatten"
    family = "shape"

    def check(self, shapes, a, strict=False):
        return (prod(shapes[0]),)

    def rf(self, rfs, shapes, a):
        if len(shapes[0]) == 1 or rfs[0] is None:
            return rfs[0]
        return GlobalPool.rf(self, rfs, shapes, a)


class BatchNorm(Op):
    name = "bn"
    family = "norm"
    args = (Arg("eps", "number", 1e-5),)

    def resolve(self, shapes, a):
        if a["eps"] <= 0:
            raise ArgError(f"bn 'eps' must be positive, got {a['eps']:g}", "eps")
        return a

    def weights(self, shapes, a):
        c = shapes[0][0]
        return {"weight": (c,), "bias": (c,)}

    def buffers(self, shapes, a):
        c = shapes[0][0]
        return {"running_mean": (c,), "running_var": (c,)}


class Lrn(Op):
    name = "lrn"
    family = "norm"
    ranks = (3,)
    args = (Arg("size", "count", 5), Arg("alpha", "number", 1e-4), Arg("beta", "number", 0.75),
            Arg("k", "number", 1.0))

    def label(self, a):
        return f"lrn {a['size']}"


class Upsample(Op):
    name = "upsample"
    family = "resample"
    ranks = (3,)
    args = (Arg("scale", "pair", 2), Arg("mode", "mode", "nearest"))

    def check(self, shapes, a, strict=False):
        self._check_rank(shapes)
        c, h, w = shapes[0]
        return (c, h * a["scale"][0], w * a["scale"][1])

    def rf(self, rfs, shapes, a):
        reach = (1, 1) if a["mode"] == "bilinear" else (0, 0)
        return rfs[0].upsampled(reach, a["scale"])

    def label(self, a):
        return f"upsample x{_fmt_pair(a['scale'])}" + (" bilinear" if a["mode"] == "bilinear"
                                                        else "")


class Concat(Op):
    name = "concat"
    family = "merge"
    arity = None

    def check(self, shapes, a, strict=False):
        ranks = {len(s) for s in shapes}
        if len(ranks) > 1:
            raise ShapeError("concat mixes vectors and feature maps: "
                             + ", ".join(fmt_shape(s) for s in shapes),
                             "flatten the feature maps first")
        if ranks == {3}:
            spatial = {s[1:] for s in shapes}
            if len(spatial) > 1:
                raise ShapeError(
                    "concat needs equal H and W, got "
                    + ", ".join(fmt_shape(s) for s in shapes),
                    "crop(a, ref) or upsample/pool to a common size first")
            return (sum(s[0] for s in shapes), *shapes[0][1:])
        return (sum(s[0] for s in shapes),)

    def rf(self, rfs, shapes, a):
        return RF.merge(rfs)


class Add(Op):
    name = "add"
    family = "merge"
    arity = None

    def check(self, shapes, a, strict=False):
        if len(shapes) < 2:
            raise ShapeError("add needs at least two tensors")
        if len(set(shapes)) > 1:
            hint = None
            if len(shapes) == 2 and len(shapes[0]) == 3 and len(shapes[1]) == 3:
                hint = ("project the shortcut with conv(C, k=1, s=S) so channels and size match"
                        if shapes[0] != shapes[1] else None)
            raise ShapeError("add needs identical shapes, got "
                             + " and ".join(fmt_shape(s) for s in shapes), hint)
        return shapes[0]

    def rf(self, rfs, shapes, a):
        return RF.merge(rfs)


class Crop(Op):
    name = "crop"
    family = "shape"
    arity = 2
    ranks = (3,)

    def check(self, shapes, a, strict=False):
        self._check_rank(shapes)
        (c, h, w), (_, hr, wr) = shapes
        if hr > h or wr > w:
            raise ShapeError(f"crop cannot enlarge: {fmt_shape(shapes[0])} cropped to "
                             f"{hr}x{wr}", "swap the arguments: crop(larger, reference)")
        return (c, hr, wr)

    def rf(self, rfs, shapes, a):
        return rfs[0]


def _pad_word(a):
    return a["p"] if isinstance(a.get("p"), str) else None


def _window_label(a) -> str:
    text = f"{a['k'][0]}x{a['k'][1]}"
    if a["s"] != (1, 1):
        text += f" /{_fmt_pair(a['s'])}"
    if a.get("d", (1, 1)) != (1, 1):
        text += f" d{_fmt_pair(a['d'])}"
    if a.get("g", 1) != 1:
        text += f" g{a['g']}"
    return text


def _simple(name, family="activation", base=Activation):
    return type(name.capitalize(), (base,), {"name": name, "family": family})


OPS: dict[str, Op] = {
    op.name: op for op in (
        Conv(), DwConv(), ConvT(), MaxPool(), AvgPool(), Gap(), Gmp(), Fc(), Flatten(),
        BatchNorm(), Lrn(), Upsample(), Concat(), Add(), Crop(), LeakyRelu(), Softmax(),
        Identity(), Dropout(),
        _simple("relu")(), _simple("relu6")(), _simple("sigmoid")(), _simple("tanh")(),
    )
}

#: Names people bring from other frameworks, mapped to ours for "did you mean" hints.
ALIASES = {
    "conv2d": "conv", "convolution": "conv", "linear": "fc", "dense": "fc",
    "fully_connected": "fc", "batchnorm": "bn", "batch_norm": "bn", "batchnorm2d": "bn",
    "cat": "concat", "concatenate": "concat", "deconv": "convt", "conv_transpose": "convt",
    "convtranspose": "convt", "conv2dtranspose": "convt", "upconv": "convt",
    "maxpool2d": "maxpool", "max_pool": "maxpool", "avgpool2d": "avgpool",
    "avg_pool": "avgpool", "globalavgpool": "gap", "global_avg_pool": "gap",
    "adaptive_avg_pool": "gap", "globalmaxpool": "gmp", "interpolate": "upsample",
    "upsampling": "upsample", "upsampling2d": "upsample", "sum": "add", "plus": "add",
    "reshape": "flatten", "view": "flatten", "depthwise": "dwconv", "depthwise_conv": "dwconv",
    "separable": "dwconv", "lrelu": "leaky_relu", "leakyrelu": "leaky_relu", "prelu": "leaky_relu",
    "center_crop": "crop", "centercrop": "crop", "localresponsenorm": "lrn",
}


def match_arguments(what: str, names: list[str], positional: list, keywords: dict,
                    noun: str = "argument") -> dict:
    """Pair call arguments with parameter names (positional first, then keywords); raise
    :class:`ArgError` naming the offending keyword, with a "did you mean" where one fits."""
    if len(positional) > len(names):
        raise ArgError(
            f"{what} takes at most {len(names)} {noun}{'s' if len(names) != 1 else ''} "
            f"({', '.join(names) or 'none'}), got {len(positional)}")
    values = dict(zip(names, positional))
    for key, value in keywords.items():
        if key not in names:
            from difflib import get_close_matches
            close = get_close_matches(key, names, n=1)
            raise ArgError(f"{what} has no {noun} '{key}'", key,
                           f"did you mean '{close[0]}'?" if close else
                           f"{what} takes: {', '.join(names) or f'no {noun}s'}")
        if key in values:
            raise ArgError(f"{what} got '{key}' twice", key)
        values[key] = value
    return values


def bind_args(op: Op, positional: list, keywords: dict) -> dict:
    """Match call arguments to ``op.args``; check and normalise each value."""
    values = match_arguments(op.name, [a.name for a in op.args], positional, keywords)
    bound = {}
    for spec in op.args:
        if spec.name in values:
            bound[spec.name] = KINDS[spec.kind](spec.name, values[spec.name])
        elif spec.default is REQUIRED:
            raise ArgError(f"{op.name} is missing its required argument '{spec.name}'", None,
                           f"e.g. {_example(op)}")
        else:
            d = spec.default
            bound[spec.name] = _pair(d) if spec.kind in ("pair", "pad", "nonneg_pair") and \
                isinstance(d, int) else d
    return bound


def _example(op: Op) -> str:
    return {"conv": "conv(64, k=3)", "convt": "convt(64, k=2, s=2)", "fc": "fc(10)",
            "maxpool": "maxpool(k=2)", "avgpool": "avgpool(k=2)", "dwconv": "dwconv(k=3)"}.get(
        op.name, op.name)
