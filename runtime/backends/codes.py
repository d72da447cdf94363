"""Codes the kernels of both backends compare against: activations (the registry's
``Activation.code``, compiler/ops/elementwise.py, as module constants named after the op in
capitals, so a new activation needs no line here) and pad modes; and what an activation's
backward reads, the same on both backends (the training plan keeps it)."""

from __future__ import annotations

from ...compiler import OPS, Activation

NONE = 0
#: ``RELU``, ``SILU``, ... : each activation's code under its name in capitals.
CODES = {op.name.upper(): op.code for op in OPS.values() if isinstance(op, Activation)}
globals().update(CODES)

#: ``pad`` modes as the pad kernels take them.
PAD_MODES = {"zeros": 0, "reflect": 1, "replicate": 2}

#: Activations whose derivative the output alone gives (relu's and relu6's tests read the
#: same on the output: 0 < y < 6 exactly where 0 < x < 6), and those that need both.
FROM_OUTPUT = tuple(CODES[name] for name in ("RELU", "RELU6", "SIGMOID", "TANH"))
FROM_BOTH = tuple(CODES[name] for name in ("ELU", "SELU"))


def act_needs(step) -> tuple[str, ...]:
    """What an activation's backward keeps of its forward pass: the output for those of
    FROM_OUTPUT (the input, read by the next layer or not, is then free to go), else the
    input (and the output for FROM_BOTH)."""
    code = step.attrs["act"]
    return ("y",) if code in FROM_OUTPUT else ("x", "y") if code in FROM_BOTH else ("x",)
