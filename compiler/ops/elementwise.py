"""Elementwise ops of one tensor: activations, clamp, prelu, softmax, and the identities.

Activations carry ``code``, their number in the fused epilogues of every backend (conv, fc,
batch norm, add and mul end with ``activate(v, code, alpha, beta)``). Codes are stable: never
renumber one, append new ones.
"""

from __future__ import annotations

from .base import Arg, ArgError, Op, register
from .formula import stated


class Activation(Op):
    """A pointwise function with at most two scalar parameters, fusable into epilogues."""

    family = "activation"
    code = 0

    def act_params(self, a) -> tuple[float, float]:
        """(alpha, beta): the scalars ``activate`` receives with this op's code."""
        return (0.0, 0.0)


def _activation(name: str, code: int):
    cls = type(name.capitalize(), (Activation,), {"name": name, "code": code})
    return register(cls)


@register
class LeakyRelu(Activation):
    name = "leaky_relu"
    code = 3
    args = (Arg("a", "number", 0.01),)
    example = "leaky_relu(0.2)"

    def act_params(self, a):
        return (a["a"], 0.0)

    def label(self, a):
        return f"leaky_relu {a['a']:g}"


#: The activations without arguments, with their codes.
for _code, _name in (
    (1, "relu"),
    (2, "relu6"),
    (4, "sigmoid"),
    (5, "tanh"),
    (6, "silu"),
    (7, "hardswish"),
    (8, "hardsigmoid"),
    (12, "softplus"),
    (13, "mish"),
    (15, "selu"),
):
    _activation(_name, _code)


@register
class Gelu(Activation):
    """GELU: the exact erf form, or with ``approx=tanh`` the tanh form (``alpha`` = 1)."""

    name = "gelu"
    code = 9
    args = (Arg("approx", "approx", "none"),)

    def act_params(self, a):
        return (1.0 if a["approx"] == "tanh" else 0.0, 0.0)

    def label(self, a):
        return "gelu tanh" if a["approx"] == "tanh" else "gelu"


@register
class Elu(Activation):
    name = "elu"
    code = 11
    args = (Arg("a", "number", 1.0),)
    example = "elu(0.5)"

    def act_params(self, a):
        return (a["a"], 0.0)

    def label(self, a):
        return f"elu {a['a']:g}"


@register
class Clamp(Activation):
    """``min(max(x, lo), hi)``; an omitted bound is no bound."""

    name = "clamp"
    code = 14
    args = (Arg("lo", "optional_number", None), Arg("hi", "optional_number", None))
    example = "clamp(-0.5, 0.7)"

    def resolve(self, shapes, a):
        if a["lo"] is None and a["hi"] is None:
            raise ArgError("clamp needs 'lo', 'hi' or both", None, "e.g. clamp(0, 6)")
        if a["lo"] is not None and a["hi"] is not None and a["lo"] > a["hi"]:
            raise ArgError(f"clamp's lo ({a['lo']:g}) is above its hi ({a['hi']:g})", "lo")
        return a

    def act_params(self, a):
        inf = float("inf")
        return (-inf if a["lo"] is None else a["lo"], inf if a["hi"] is None else a["hi"])

    def label(self, a):
        lo = "" if a["lo"] is None else f"{a['lo']:g}"
        hi = "" if a["hi"] is None else f"{a['hi']:g}"
        return f"clamp [{lo}, {hi}]"


@register
class Prelu(Op):
    """Leaky ReLU with a learned slope per channel (or one for all: ``shared=true``)."""

    name = "prelu"
    family = "activation"
    args = (Arg("shared", "bool", False),)

    def weights(self, shapes, a):
        return {"weight": (1 if a["shared"] else shapes[0][0],)}

    def initial(self, name, shape, a):
        return ("const", 0.25)  # PyTorch's default

    def explain_params(self, shapes, a):
        if a["shared"]:
            return [stated("weight", "1", 1, note="shared=true: one slope for all channels")]
        return [stated("weight", "C", shapes[0][0], note="one slope per channel")]


@register
class Softmax(Op):
    """Softmax over channels (per position): not pointwise, so never fused."""

    name = "softmax"
    family = "activation"


@register
class Identity(Op):
    name = "identity"
    family = "shape"


class _InferenceIdentity(Op):
    """Training-time regularisers: the identity at inference."""

    family = "shape"

    def resolve(self, shapes, a):
        if not 0.0 <= a["p"] < 1.0:
            raise ArgError(f"{self.name} 'p' must be in [0, 1), got {a['p']:g}", "p")
        return a

    def label(self, a):
        return f"{self.name} {a['p']:g}"


@register
class Dropout(_InferenceIdentity):
    name = "dropout"
    args = (Arg("p", "number", 0.5),)


@register
class DropPath(_InferenceIdentity):
    """Stochastic depth (drops whole residual branches while training)."""

    name = "droppath"
    args = (Arg("p", "number"),)
    example = "droppath(0.2)"
