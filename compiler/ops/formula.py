"""The arithmetic behind a layer's row, as a lecture writes it (``cnnc check --explain``).

Each op's registry entry renders its own rules: ``explain_shape``, ``explain_params``,
``explain_macs`` and ``explain_rf`` sit beside ``check``, ``weights``, ``macs`` and ``rf`` and
return :class:`Formula` objects: the rule in symbols, the same rule with this layer's numbers,
and the value the rule computed. The arithmetic is a Python expression (``floor``, ``ceil``,
``max``, ``min``), so the tests evaluate it exactly and compare it with that value.

Symbols: the input is ``C x H x W`` (a vector: ``N``), the output ``C' x H' x W'``; ``k``,
``s``, ``p``, ``d`` and ``g`` are the kernel, stride, padding, dilation and groups; ``r_in``
and ``j_in`` are the input's receptive field and jump (input pixels between neighbouring
positions), ``r`` and ``j`` the output's.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

NOT_COUNTED = "only conv, dwconv, convt and fc count MACs, as torchvision's tables do"
AXES = ("H", "W")


@dataclass(frozen=True)
class Formula:
    """One quantity of a layer's row: ``quantity = rule = arithmetic = value``.

    ``axes`` says which output dimensions (shape formulas) or which axes (receptive-field
    formulas: 0 height, 1 width) the value gives; empty for an intermediate step.
    """

    quantity: str
    rule: str
    arithmetic: str
    value: object
    axes: tuple = ()
    note: str = ""

    def text(self, note: bool = True) -> str:
        """``H' = floor((H + 2p - d(k-1) - 1) / s) + 1 = floor((224 + ...) / 2) + 1 = 112``,
        leaving out a part that only repeats the next one (and a shape's tuple)."""
        arithmetic = "" if isinstance(self.value, tuple) else self.arithmetic
        parts = [self.rule, arithmetic, show(self.value)]
        kept = [p for i, p in enumerate(parts) if p and (i == 2 or not _same(p, parts[i + 1]))]
        line = f"{self.quantity} = " + " = ".join(kept)
        return line + (f"  ({self.note})" if note and self.note else "")

    def to_json(self) -> dict:
        value = self.value
        if isinstance(value, tuple):
            value = [json_number(v) for v in value]
        else:
            value = json_number(value)
        data = {
            "quantity": self.quantity,
            "rule": self.rule,
            "arithmetic": self.arithmetic,
            "value": value,
        }
        if self.note:
            data["note"] = self.note
        return data


def _same(text: str, following: str) -> bool:
    """Whether a part only repeats the next one (1000 before 1,000)."""
    return text.replace(",", "") == following.replace(",", "")


def json_number(v):
    """Fractions (jumps after a resize) as ``"3/2"``; everything else as it is."""
    if isinstance(v, Fraction):
        return v.numerator if v.denominator == 1 else f"{v.numerator}/{v.denominator}"
    return v


def show(v) -> str:
    """A value as the table prints it: 9,408; 64x56x56; 3/2."""
    if isinstance(v, tuple):
        return "x".join(str(x) for x in v)
    if isinstance(v, Fraction):
        return f"{v.numerator:,}" if v.denominator == 1 else f"{v.numerator}/{v.denominator}"
    if isinstance(v, int) and not isinstance(v, bool):
        return f"{v:,}"
    return str(v)


def num(v) -> str:
    """A number inside arithmetic: 7, or (3/2) for a fractional jump."""
    if isinstance(v, Fraction) and v.denominator != 1:
        return f"({v.numerator}/{v.denominator})"
    return str(int(v)) if isinstance(v, Fraction) else str(v)


def per_group(c: int, g: int) -> str:
    """``C/g`` as arithmetic: just C without groups."""
    return str(c) if g == 1 else f"({c}/{g})"


def product(*factors) -> str:
    return " * ".join(str(f) for f in factors)


def per_axis(quantity: str, rule, arithmetic, values, first: int | None, note: str = ""):
    """One formula per spatial axis, or one for both when their arithmetic is the same.

    ``quantity`` names the height's (``H'``, ``r``); ``rule`` and ``arithmetic`` are
    functions of the axis index (0 height, 1 width); ``first`` is the height's index among
    the output dimensions (1 in ``C x H x W``; 0 for receptive-field axes; None for a step
    that gives no dimension, like ``p=same``'s padding)."""
    texts = [arithmetic(i) for i in (0, 1)]

    def axes(*i):
        return () if first is None else tuple(first + x for x in i)

    if texts[0] == texts[1] and values[0] == values[1]:
        both = f"{quantity}, {_on_width(quantity)}" if quantity.endswith("'") else quantity
        return [Formula(both, rule(0), texts[0], values[0], axes(0, 1), note)]
    names = (
        (quantity, _on_width(quantity))
        if quantity.endswith("'")
        else (f"{quantity} (height)", f"{quantity} (width)")
    )
    return [
        Formula(names[i], rule(i), texts[i], values[i], axes(i), note if i == 0 else "")
        for i in (0, 1)
    ]


def _on_width(quantity: str) -> str:
    return quantity.replace("H", "W")


def same_shape(out: tuple, rule: str = "the input's shape", note: str = "") -> Formula:
    """A shape stated, not computed: the identities and pointwise ops."""
    return Formula(
        "output",
        rule,
        "(" + ", ".join(str(d) for d in out) + ("," if len(out) == 1 else "") + ")",
        tuple(out),
        tuple(range(len(out))),
        note,
    )


def stated(quantity: str, rule: str, value, axes: tuple = (), note: str = "") -> Formula:
    """A value read off an argument or an input (``C' = out = 64``)."""
    return Formula(quantity, rule, num(value), value, axes, note)


def not_counted() -> list[Formula]:
    return [Formula("MACs", "0", "0", 0, note=NOT_COUNTED)]


def unchanged_rf(rf, note: str = "") -> list[Formula]:
    """``r = r_in``, ``j = j_in``: each output position sees what its input position saw."""
    return per_axis("r", lambda i: "r_in", lambda i: num(rf.size[i]), rf.size, 0, note) + per_axis(
        "j", lambda i: "j_in", lambda i: num(rf.jump[i]), rf.jump, 0
    )


def window_rf(
    rf_in, rf, reach_rule: str, reaches, stride_rule: str, strides, upsampling: bool = False
) -> list[Formula]:
    """After a sliding window: ``r = r_in + reach * j_in`` and ``j = j_in * stride``, where
    the window reaches ``reach`` input steps past its first (``d(k-1)`` for a kernel); after
    an upsampling, ``j = j_in / stride``. The rules may name the axis as ``{N}`` (H or W);
    ``reaches`` and ``strides`` hold each axis's arithmetic."""
    step = "/" if upsampling else "*"

    def size(i):
        text = f"{num(rf_in.size[i])} + {reaches[i]} * {num(rf_in.jump[i])}"
        return text if _whole(rf_in.jump[i]) else f"floor({text})"

    return per_axis(
        "r", lambda i: f"r_in + {reach_rule} * j_in".format(N=AXES[i]), size, rf.size, 0
    ) + per_axis(
        "j",
        lambda i: f"j_in {step} {stride_rule}".format(N=AXES[i]),
        lambda i: f"{num(rf_in.jump[i])} {step} {strides[i]}",
        rf.jump,
        0,
    )


def _whole(v) -> bool:
    return Fraction(v).denominator == 1
