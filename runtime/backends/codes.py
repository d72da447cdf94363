"""Codes the kernels of both backends compare against: activations (the registry's
``Activation.code``, compiler/ops/elementwise.py, as module constants named after the op in
capitals, so a new activation needs no line here) and pad modes."""

from __future__ import annotations

from ...compiler import OPS, Activation

NONE = 0
#: ``RELU``, ``SILU``, ... : each activation's code under its name in capitals.
CODES = {op.name.upper(): op.code for op in OPS.values() if isinstance(op, Activation)}
globals().update(CODES)

#: ``pad`` modes as the pad kernels take them.
PAD_MODES = {"zeros": 0, "reflect": 1, "replicate": 2}
