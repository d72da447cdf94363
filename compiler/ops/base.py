"""The shared machinery of op entries: argument kinds, the receptive field, the :class:`Op`
base class and the registry every op module adds itself to with :func:`register`.

Each :class:`Op` knows its arguments (with defaults and types), how many tensors it takes, its
output-shape rule, its weights (PyTorch layouts) and how they start, its MACs and how it
transforms the receptive field, and writes out the arithmetic of each of those rules for
``cnnc check --explain`` (formula.py). Shapes are tuples without the batch: ``(C, H, W)`` or
``(N,)``.
Nothing here imports Numba or NumPy; the runtimes register kernels under the same op names.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from math import prod

from .formula import (
    AXES,
    Formula,
    not_counted,
    per_axis,
    same_shape,
    unchanged_rf,
    window_rf,
)

REQUIRED = object()

#: Words that stand for themselves as argument values.
WORDS = ("same", "valid", "nearest", "bilinear", "none", "tanh", "zeros", "reflect", "replicate")

#: Every op by name, filled by :func:`register` as the op modules are imported.
OPS: dict[str, Op] = {}


def register(cls):
    """Class decorator: add one instance of an op class to :data:`OPS` under its name."""
    if cls.name in OPS:
        raise ValueError(f"op '{cls.name}' is registered twice")
    OPS[cls.name] = cls()
    return cls


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


def _kind_nonneg_int(name, v):
    if not _is_int(v) or v < 0:
        raise ArgError(f"'{name}' must be a non-negative integer, got {_show(v)}", name)
    return v


def _kind_optional_number(name, v):
    return None if v is None else _kind_number(name, v)


def _words(*allowed):
    def kind(name, v):
        if v not in allowed:
            raise ArgError(f"'{name}' must be {' or '.join(allowed)}, got {_show(v)}", name)
        return v

    return kind


def _kind_padding(name, v):
    """``pad``'s amount: an int, ``(h, w)`` or ``(top, bottom, left, right)``; normalised to
    the four sides."""
    if _is_int(v):
        v = (v, v)
    if isinstance(v, tuple) and len(v) == 2:
        v = (v[0], v[0], v[1], v[1])
    if not (isinstance(v, tuple) and len(v) == 4 and all(_is_int(x) and x >= 0 for x in v)):
        raise ArgError(
            f"'{name}' must be a non-negative integer, (h, w) or "
            f"(top, bottom, left, right), got {_show(v)}",
            name,
        )
    return v


KINDS = {
    "count": _kind_count,
    "pair": _kind_pair,
    "pad": _kind_pad,
    "nonneg_pair": _kind_nonneg_pair,
    "number": _kind_number,
    "bool": _kind_bool,
    "mode": _kind_mode,
    "optional_number": _kind_optional_number,
    "nonneg_int": _kind_nonneg_int,
    "approx": _words("none", "tanh"),
    "pad_mode": _words("zeros", "reflect", "replicate"),
    "padding": _kind_padding,
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
        return RF(
            tuple(max(r.size[i] for r in rfs) for i in (0, 1)),
            tuple(max(r.jump[i] for r in rfs) for i in (0, 1)),
        )


# ---- ops ----------------------------------------------------------------------------------

#: Each rule of an op and the method that writes out its arithmetic.
EXPLAINED = {
    "check": "explain_shape",
    "weights": "explain_params",
    "macs": "explain_macs",
    "rf": "explain_rf",
}


def unexplained(cls) -> list[str]:
    """The rules that ``cls`` (an op class) defines below the class explaining them: an op
    that changes a rule and not its explanation would print stale arithmetic."""

    def owner(attr):
        return next(k for k in cls.__mro__ if attr in vars(k))

    return [
        rule for rule, explain in EXPLAINED.items() if not issubclass(owner(explain), owner(rule))
    ]


class Op:
    """Base: a shape-preserving op of one tensor, no weights, no MACs."""

    name = ""
    family = "activation"
    args: tuple[Arg, ...] = ()
    arity = 1  # number of tensors; None means one or more
    optional_tensors = 0  # further tensors that may follow the required ones (resize's ref)
    ranks = (1, 3)
    #: A stage using the op, for hints and for the tests that run every op on an input of
    #: ``example_input`` (named ``x`` there).
    example = ""
    example_input = "6x5x7"

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

    def initial(self, name: str, shape: tuple, a) -> tuple:
        """How a weight or buffer starts when none is given, as data the runtime draws from:
        ``("const", v)``, ``("he_normal", fan_in)`` or ``("xavier_uniform", fan_in,
        fan_out)``. Biases start at zero; other weights He-normal over their fan-in."""
        if name == "bias" or len(shape) < 2:
            return ("const", 0.0)
        return ("he_normal", prod(shape[1:]))

    def rf(self, rfs, shapes, a):
        return rfs[0]

    def label(self, a) -> str:
        return self.name

    # ---- explanations: each rule above writes out its arithmetic (formula.py). A class that
    # overrides a rule overrides its explanation too (see EXPLAINED; the registry test checks).

    def explain_shape(self, shapes, out, a) -> list[Formula]:
        return [same_shape(out)]

    def explain_params(self, shapes, a) -> list[Formula]:
        """One formula per weight (none: no learned parameters)."""
        return []

    def explain_macs(self, shapes, out, a) -> list[Formula]:
        return not_counted()

    def explain_rf(self, rfs, shapes, a, rf) -> list[Formula]:
        """``rf`` is the output's field (what :meth:`rf` returned)."""
        return unchanged_rf(rf)

    def _check_rank(self, shapes):
        for s in shapes:
            if len(s) not in self.ranks:
                if self.ranks == (3,):
                    raise ShapeError(
                        f"{self.name} needs a CxHxW input, got a vector of {s[0]}",
                        "this op works on feature maps; vectors come after 'flatten'",
                    )
                raise ShapeError(f"{self.name} got an input of shape {fmt_shape(s)}")


class Windowed(Op):
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
                        f"would need {dd * (kk - 1)}/2 pixels of padding on each side",
                        "p",
                        "use an odd kernel size or give the padding explicitly",
                    )
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
                    "pad the input, use a smaller kernel, or pool less before this layer",
                )
            if strict and span % ss:
                raise ShapeError(
                    f"stride {ss} does not tile the input: ({size} + 2*{pp} - {extent})/{ss} + 1"
                    f" = {span / ss + 1:g} is not a whole number (--strict)",
                    "change padding or stride so that (N + 2P - F) is a multiple of S",
                )
            sizes.append(out)
        return tuple(sizes)

    def _explain_size(self, shape, out, a, ceil_mode=False) -> list[Formula]:
        """H' and W' of a window sliding over the padded input (and ``p=same``'s padding)."""
        _, h, w = shape
        k, s, p, d = a["k"], a["s"], a["p"], self._dilation(a)
        formulas = []
        if a.get("pad_word") == "same":
            formulas += per_axis(
                "p",
                lambda i: "d(k-1) / 2",
                lambda i: f"{d[i]}*({k[i]}-1) / 2",
                p,
                None,
                "p=same keeps the size at stride 1",
            )
        rounding = "ceil" if ceil_mode else "floor"
        window = "d(k-1) - 1" if d else "k"

        def window_of(i):
            return f"{d[i]}*({k[i]}-1) - 1" if d else f"{k[i]}"

        def span(i):
            return (h, w)[i] + 2 * p[i] - (d[i] if d else 1) * (k[i] - 1) - 1

        def dropped(i):  # ceil mode: a last window starting in the right padding is dropped
            return ceil_mode and out[1 + i] < -(-span(i) // s[i]) + 1

        def partial(i):
            return span(i) % s[i] != 0

        return formulas + per_axis(
            "H'",
            lambda i: (
                f"{rounding}(({AXES[i]} + 2p - {window}) / s) + 1" + (" - 1" if dropped(i) else "")
            ),
            lambda i: (
                f"{rounding}(({(h, w)[i]} + 2*{p[i]} - {window_of(i)}) / {s[i]}) + 1"
                + (" - 1" if dropped(i) else "")
            ),
            out[1:],
            1,
            _ceil_note(ceil_mode, any(dropped(i) for i in (0, 1)), any(partial(i) for i in (0, 1))),
        )

    def _dilation(self, a):
        """The dilation, or None for an op without the argument (avgpool): its formulas are
        the lecture's ``(N + 2P - F)/S + 1``."""
        return a["d"] if any(arg.name == "d" for arg in self.args) else None

    def _explain_window_rf(self, rfs, a, rf) -> list[Formula]:
        k, d = a["k"], self._dilation(a)
        if d is None:  # the window reaches k-1 steps
            return window_rf(rfs[0], rf, "(k-1)", [f"({k[i]}-1)" for i in (0, 1)], "s", a["s"])
        return window_rf(rfs[0], rf, "d(k-1)", [f"{d[i]}*({k[i]}-1)" for i in (0, 1)], "s", a["s"])


def _ceil_note(ceil_mode: bool, dropped: bool, partial: bool) -> str:
    if not ceil_mode:
        return ""
    if dropped:
        return "ceil=true, but a last window that would start in the right padding is dropped"
    if partial:
        return "ceil=true: a last window that overhangs the input counts"
    return "ceil=true, but the windows tile the input: floor gives the same"


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


def match_arguments(
    what: str, names: list[str], positional: list, keywords: dict, noun: str = "argument"
) -> dict:
    """Pair call arguments with parameter names (positional first, then keywords); raise
    :class:`ArgError` naming the offending keyword, with a "did you mean" where one fits."""
    if len(positional) > len(names):
        raise ArgError(
            f"{what} takes at most {len(names)} {noun}{'s' if len(names) != 1 else ''} "
            f"({', '.join(names) or 'none'}), got {len(positional)}"
        )
    values = dict(zip(names, positional))
    for key, value in keywords.items():
        if key not in names:
            from difflib import get_close_matches

            close = get_close_matches(key, names, n=1)
            raise ArgError(
                f"{what} has no {noun} '{key}'",
                key,
                f"did you mean '{close[0]}'?"
                if close
                else f"{what} takes: {', '.join(names) or f'no {noun}s'}",
            )
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
            raise ArgError(
                f"{op.name} is missing its required argument '{spec.name}'",
                None,
                f"e.g. {_example(op)}",
            )
        else:
            d = spec.default
            bound[spec.name] = (
                _pair(d)
                if spec.kind in ("pair", "pad", "nonneg_pair") and isinstance(d, int)
                else d
            )
    return bound


def _example(op: Op) -> str:
    return op.example or op.name
